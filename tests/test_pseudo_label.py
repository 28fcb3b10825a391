"""Pseudo-label bank: the merge rule, equality with four independent STCN runs, resume,
manifest checks, budget errors, confidence maps, the CLI and torchrun sharding."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import batch_invariant_convolutions, reference_davis
from twoshot.cli import main as cli_main
from twoshot.config import InferenceConfig, load_config
from twoshot.data.budget import save_budget
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_frames, open_dataset
from twoshot.errors import UserError
from twoshot.inference import assign_sources
from twoshot.inference.pseudo_label import build_bank
from twoshot.inference.schedule import nearest_runs
from twoshot.model import STCN, build_model, save_weights

CONFIG = InferenceConfig(size=-1, mem_every=2, device="cpu", key_batch=4)


@pytest.fixture(scope="module")
def model() -> STCN:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


# ---------------------------------------------------------------------------------------------
# The merge rule


@pytest.mark.parametrize(
    "num_frames,labeled,expected",
    [
        (5, [0, 4], [0, 0, 4, 4, 4]),  # DESIGN's example: 1 from A, 2 and 3 from B
        (10, [2, 7], [2, 2, 2, 2, 2, 7, 7, 7, 7, 7]),  # before A backward, after B forward
        (12, [1, 4, 9], [1, 1, 1, 4, 4, 4, 4, 9, 9, 9, 9, 9]),  # three labeled frames
        (6, [2, 3], [2, 2, 2, 3, 3, 3]),  # adjacent labeled frames
        (3, [0, 2], [0, 2, 2]),  # one frame between: the tie goes later
        (4, [0, 3], [0, 0, 3, 3]),  # labeled first and last frames
        (4, [3], [3, 3, 3, 3]),  # one labeled frame, the last
    ],
)
def test_merge_rule(num_frames: int, labeled: list[int], expected: list[int]) -> None:
    assert assign_sources(num_frames, labeled) == expected


def test_runs_cover_each_unlabeled_frame_once_and_stop_at_their_last_frame() -> None:
    runs = nearest_runs(10, [0, 6], None, mem_every=5, include_last=False)
    summary = [(r.source, r.direction, [s.frame for s in r.steps if s.emit]) for r in runs]
    assert summary == [(0, 1, [1, 2]), (6, -1, [5, 4, 3]), (6, 1, [7, 8, 9])]
    assert [s.frame for s in runs[1].steps] == [6, 5, 4, 3]  # from the labeled frame, stopping at 3


# ---------------------------------------------------------------------------------------------
# Bank contents


def _dataset(tmp_path: Path, videos: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    data = make_davis(tmp_path / "davis", videos or {"bear": 10}, size=(48, 64), object_ids=(1, 2))
    return data, open_dataset("davis", data.root, "train")


def _read_bank(folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([read_mask(folder / f"{name}.png")[0] for name in names])


def test_bank_equals_four_independent_runs_merged(model: STCN, tmp_path: Path) -> None:
    data, sequences = _dataset(tmp_path)
    a, b = 2, 7
    budget = {"bear": [f"{a:05d}.jpg", f"{b:05d}.jpg"]}
    with batch_invariant_convolutions():
        summary = build_bank(model, sequences, budget, tmp_path / "bank", CONFIG, progress=False)
        frames = load_frames(sequences[0])
        gt = {i: read_mask(sequences[0].mask_paths[i])[0] for i in (a, b)}
        # The reference's way: four full runs, each re-encoding every frame it passes.
        fwd = {s: reference_davis(model, frames[s:], gt[s], mem_every=2) for s in (a, b)}
        bwd = {s: reference_davis(model, frames[s::-1].copy(), gt[s], mem_every=2)[::-1] for s in (a, b)}
    expected = np.zeros_like(data.labels["bear"])
    for t in range(10):
        if t in gt:
            expected[t] = gt[t]
        elif t < a:
            expected[t] = bwd[a][t]
        elif t <= a + (b - a - 1) // 2:
            expected[t] = fwd[a][t - a]
        elif t < b:
            expected[t] = bwd[b][t]
        else:
            expected[t] = fwd[b][t - b]
    names = data.frame_names["bear"]
    bank = _read_bank(tmp_path / "bank" / "bear", names)
    np.testing.assert_array_equal(bank, expected)
    assert len(np.unique(bank[[0, 4, 5, 9]])) >= 2  # not a trivial output
    # palette of the input, manifest with provenance
    assert read_mask(tmp_path / "bank" / "bear" / "00003.png")[1] == read_mask(sequences[0].mask_paths[a])[1]
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and summary.written == 1
    assert manifest["videos"]["bear"]["labeled"] == ["00002", "00007"]
    sources = manifest["videos"]["bear"]["frames"]
    assert [sources[n] for n in names] == ["00002"] * 5 + ["00007"] * 5
    assert manifest["inference"]["mem_every"] == 2 and manifest["checkpoint"]["sha256"]


def test_confidence_maps(model: STCN, tmp_path: Path) -> None:
    _, sequences = _dataset(tmp_path, {"bear": 6})
    build_bank(
        model, sequences, {"bear": ["00001.jpg"]}, tmp_path / "bank", CONFIG, confidence=True, progress=False
    )
    folder = tmp_path / "bank" / "bear" / "confidence"
    from PIL import Image

    with Image.open(folder / "00001.png") as image:
        assert image.mode == "L" and np.asarray(image).min() == 255  # labeled frame: certain
    with Image.open(folder / "00004.png") as image:
        conf = np.asarray(image)
    assert conf.shape == (48, 64) and conf.min() >= 85  # max over 3 classes is >= 1/3


# ---------------------------------------------------------------------------------------------
# Resume and refusals


def test_resume_skips_finished_videos(model: STCN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, sequences = _dataset(tmp_path, {"bear": 5, "cat": 5})
    budget = {"bear": ["00000.jpg"], "cat": ["00004.jpg"]}
    out = tmp_path / "bank"
    first = build_bank(model, sequences, budget, out, CONFIG, progress=False)
    assert (first.written, first.skipped) == (2, 0)
    stamp = (out / "cat" / "00000.png").stat().st_mtime_ns
    again = build_bank(model, sequences, budget, out, CONFIG, progress=False)
    assert (again.written, again.skipped, again.frames) == (0, 2, 0)
    # a video lost after being recorded (or killed before its record) is redone
    import shutil

    shutil.rmtree(out / "bear")
    third = build_bank(model, sequences, budget, out, CONFIG, progress=False)
    assert (third.written, third.skipped) == (1, 1)
    assert (out / "bear" / "00004.png").is_file()
    assert (out / "cat" / "00000.png").stat().st_mtime_ns == stamp
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_bank_from_other_budget_or_weights_is_refused(model: STCN, tmp_path: Path) -> None:
    _, sequences = _dataset(tmp_path, {"bear": 5})
    out = tmp_path / "bank"
    budget_file = tmp_path / "budget.json"
    save_budget(budget_file, {"bear": ["00000.jpg"]})
    build_bank(model, sequences, budget_file, out, CONFIG, progress=False)
    with pytest.raises(UserError, match="budget: the bank was made from .*budget.json"):
        build_bank(model, sequences, {"bear": ["00003.jpg"]}, out, CONFIG, progress=False)
    torch.manual_seed(1)
    other = build_model(load_config("tiny").model)
    with pytest.raises(UserError, match="checkpoint: the bank was made from"):
        build_bank(other, sequences, budget_file, out, CONFIG, progress=False)
    with pytest.raises(UserError, match="inference.mem_every"):
        build_bank(model, sequences, budget_file, out, InferenceConfig(size=-1, device="cpu"), progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no manifest.json"):
        build_bank(model, sequences, budget_file, stranger, CONFIG, progress=False)


@pytest.mark.parametrize(
    "budget,message",
    [
        ({"wolf": ["00000.jpg"]}, "not in the dataset: wolf"),
        ({"bear": ["00042.jpg"]}, "has no frame 00042.jpg"),
        ({"bear": ["00003.jpg"]}, "00003.png: annotation PNG of labeled frame 00003"),
        ({"bear": []}, "has no labeled frame"),
    ],
)
def test_budget_errors(model: STCN, tmp_path: Path, budget: dict, message: str) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 5}, size=(48, 64), annotate=[0, 1])
    sequences = open_dataset("davis", data.root, "train")
    with pytest.raises(UserError, match=message):
        build_bank(model, sequences, budget, tmp_path / "bank", CONFIG, progress=False)
    assert not (tmp_path / "bank").exists()


def test_pseudo_label_cli(model: STCN, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, sequences = _dataset(tmp_path, {"bear": 6, "cat": 5})
    ckpt = tmp_path / "tiny.pth"
    save_weights(model, ckpt)
    save_budget(tmp_path / "budget.json", {"bear": ["00001.jpg", "00004.jpg"], "cat": ["00002.jpg"]})
    args = [
        "pseudo-label",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(data.root),
        "--budget",
        str(tmp_path / "budget.json"),
        "--out",
        str(tmp_path / "bank"),
        "--device",
        "cpu",
        "--confidence",
    ]
    assert cli_main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "2 videos" in captured.out and "11 frames" in captured.out
    assert captured.err == ""  # no progress bar
    assert sorted(p.name for p in (tmp_path / "bank" / "bear").glob("*.png")) == [
        f"{i:05d}.png" for i in range(6)
    ]
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["checkpoint"]["path"] == str(ckpt) and manifest["inference"]["size"] == -1
    assert manifest["budget"]["path"] == str(tmp_path / "budget.json")
    assert cli_main(args) == 0
    assert "skipped 2" in capsys.readouterr().out
    bad = args[:-1] + ["--mem-every", "1"]
    assert cli_main(bad) == 2
    assert "inference.mem_every" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# torchrun: videos sharded over ranks, one manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_shard_videos_and_rank0_writes_the_manifest(model: STCN, tmp_path: Path) -> None:
    data, sequences = _dataset(tmp_path, {"bear": 4, "cat": 4, "dog": 4})
    ckpt = tmp_path / "tiny.pth"
    save_weights(model, ckpt)
    budget = tmp_path / "budget.json"
    save_budget(budget, {"bear": ["00000.jpg"], "cat": ["00001.jpg"], "dog": ["00002.jpg"]})
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "twoshot.cli",
            "pseudo-label",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data.root),
            "--budget",
            str(budget),
            "--out",
            str(tmp_path / "bank"),
            "--device",
            "cpu",
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    bank = tmp_path / "bank"
    done = [json.loads(line)["video"] for line in (bank / "progress.jsonl").read_text().splitlines()]
    other = [json.loads(line)["video"] for line in (bank / "progress.rank1.jsonl").read_text().splitlines()]
    assert (done, other) == (["bear", "dog"], ["cat"])
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["status"] == "complete" and list(manifest["videos"]) == ["bear", "cat", "dog"]
    single = build_bank(
        model,
        sequences,
        budget,
        tmp_path / "single",
        # What the command line runs: the tiny preset's settings (its exact path included).
        dataclasses.replace(load_config("tiny").inference, device="cpu"),
        checkpoint=ckpt,
        progress=False,
    )
    assert single.written == 3
    for video in ("bear", "cat", "dog"):
        np.testing.assert_array_equal(
            _read_bank(bank / video, data.frame_names[video]),
            _read_bank(tmp_path / "single" / video, data.frame_names[video]),
        )
