"""Frame suggestions (``twoshot budget --strategy uncertainty``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_video
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.fixtures import make_davis
from twoshot.data.readers import open_dataset
from twoshot.inference.key_cache import FrameSource
from twoshot.inference.suggest import suggest_frames
from twoshot.model import build_model, save_weights


def test_greedy_picks_the_least_certain_frame(tmp_path: Path) -> None:
    seq = make_video(tmp_path, "v", num_frames=10, size=(24, 32))
    calls: list[list[int]] = []

    def uncertainty(frames: FrameSource, masks: dict[int, np.ndarray]) -> np.ndarray:
        # Drift grows with the distance from the nearest labeled frame, three times faster
        # from frame 7 on (a hard stretch at the end of the video).
        calls.append(sorted(masks))
        t = np.arange(len(frames))
        distance = np.min([np.abs(t - m) for m in masks], axis=0)
        return distance * np.where(t >= 7, 3.0, 1.0)

    # First the middle frame (5); then 9 (4 x 3 = 12 beats frame 0's 5); then 7 (2 x 3 = 6 > 5).
    assert suggest_frames(seq, 3, uncertainty) == [5, 7, 9]
    assert calls == [[5], [5, 9]]  # propagation only from the frames chosen so far
    assert suggest_frames(seq, 1, uncertainty) == [5]


def test_budget_cli_with_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    config = load_config("tiny")
    ckpt = tmp_path / "w.pth"
    save_weights(build_model(config.model).eval(), ckpt)
    data = make_davis(tmp_path / "davis", {"bear": 8, "cow": 6}, size=(32, 32), object_ids=(1, 2))
    out = tmp_path / "budget.json"
    args = ["budget", "--data", str(data.root), "--strategy", "uncertainty", "--checkpoint", str(ckpt)]
    assert cli_main([*args, "--shots", "3", "--out", str(out), "--device", "cpu"]) == 0
    budget = json.loads(out.read_text())
    sequences = {seq.name: seq for seq in open_dataset("davis", data.root, "train")}
    assert sorted(budget) == sorted(sequences)
    for entries in budget.values():
        assert len(entries) == 3 == len(set(entries))
        assert entries == sorted(entries)
    assert "bear: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--strategy", "uncertainty"], "--strategy uncertainty needs --checkpoint"),
        (
            ["--strategy", "uncertainty", "--checkpoint", "missing.pth", "--shots", "7"],
            "has only 6 annotated",
        ),
        (["--strategy", "uniform", "--checkpoint", "missing.pth"], "used only by --strategy uncertainty"),
    ],
)
def test_bad_input_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 6}, size=(24, 24), object_ids=(1,))
    out = tmp_path / "budget.json"
    assert cli_main(["budget", "--data", str(data.root), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
