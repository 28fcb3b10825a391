"""Frame suggestions (``twoshot budget --strategy uncertainty|disagreement``)."""

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
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask
from twoshot.data.readers import open_dataset
from twoshot.inference.disagreement import comparison_sources, disagreement, propagation_disagreement
from twoshot.inference.engine import PropagationEngine
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


def test_disagreement_is_the_mean_total_variation_by_hand() -> None:
    # Two pixels, three classes. Pixel a: (0.7, 0.2, 0.1) vs (0.1, 0.3, 0.6): half of
    # 0.6 + 0.1 + 0.5 = 0.6. Pixel b: both certain of the background: 0. Mean: 0.3.
    p = np.array([[[0.7, 1.0]], [[0.2, 0.0]], [[0.1, 0.0]]])
    q = np.array([[[0.1, 1.0]], [[0.3, 0.0]], [[0.6, 0.0]]])
    assert disagreement(p, q) == pytest.approx(0.3)
    assert disagreement(q, p) == pytest.approx(0.3) and disagreement(p, p) == 0.0
    # Certain of different classes everywhere: 1.
    assert disagreement(np.eye(2)[:, :, None], np.eye(2)[::-1, :, None]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        disagreement(p, q[:2])


def test_comparison_sources_by_hand() -> None:
    # Between 2 and 7: forward from 2 and backward from 7; before 2 the two chosen frames
    # both run backward, after 7 both forward; the nearer one first.
    assert comparison_sources(10, [7, 2]) == {
        0: (2, 7),
        1: (2, 7),
        **dict.fromkeys(range(3, 7), (2, 7)),
        8: (7, 2),
        9: (7, 2),
    }
    assert comparison_sources(4, [1]) == {0: (1,), 2: (1,), 3: (1,)}  # compared with the copy
    assert comparison_sources(3, []) == {}


def _tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    ckpt = tmp_path / "w.pth"
    save_weights(build_model(load_config("tiny").model).eval(), ckpt)
    return ckpt


def test_disagreement_scores_with_a_model(tmp_path: Path) -> None:
    from twoshot.data.readers import load_frames
    from twoshot.inference.predictor import load_for_inference

    seq = make_video(tmp_path, "v", num_frames=7, size=(24, 32))
    model, config = load_for_inference(_tiny_checkpoint(tmp_path))
    predictions: dict[int, np.ndarray] = {}
    score = propagation_disagreement(PropagationEngine(model, config, "cpu"), predictions)
    frames = load_frames(seq)
    masks = {1: _mask(seq, 1), 5: _mask(seq, 5)}
    scores = score(frames, masks)
    assert scores.shape == (7,) and scores[1] == scores[5] == 0.0
    assert all(0.0 < scores[t] <= 1.0 for t in (0, 2, 3, 4, 6))
    assert np.array_equal(score(frames, masks), scores)  # deterministic
    assert sorted(predictions) == [0, 2, 3, 4, 6]
    assert all(p.shape == (24, 32) and p.dtype == np.uint8 for p in predictions.values())
    assert set(np.unique(np.stack(list(predictions.values())))) <= {0, 1, 2}
    # One chosen frame: each frame against the chosen mask copied.
    assert score(frames, {3: _mask(seq, 3)})[[0, 1, 2, 4, 5, 6]].min() > 0.0


def _mask(seq: VideoSequence, t: int) -> np.ndarray:
    return read_mask(seq.mask_paths[t])[0]


@pytest.mark.parametrize("strategy", ["uncertainty", "disagreement"])
def test_budget_cli_with_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str
) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    data = make_davis(tmp_path / "davis", {"bear": 8, "cow": 6}, size=(32, 32), object_ids=(1, 2))
    args = ["budget", "--data", str(data.root), "--strategy", strategy, "--checkpoint", str(ckpt)]
    budgets = []
    for attempt in range(2):
        out = tmp_path / f"budget{attempt}.json"
        assert cli_main([*args, "--shots", "3", "--out", str(out), "--device", "cpu"]) == 0
        budgets.append(json.loads(out.read_text()))
    budget = budgets[0]
    assert budgets[1] == budget  # deterministic
    sequences = {seq.name: seq for seq in open_dataset("davis", data.root, "train")}
    assert sorted(budget) == sorted(sequences)
    for name, entries in budget.items():
        assert len(entries) == 3 == len(set(entries))
        assert entries == sorted(entries)
        assert set(entries) <= {p.name for p in sequences[name].frame_paths}
    assert "bear: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--strategy", "uncertainty"], "--strategy uncertainty needs --checkpoint"),
        (
            ["--strategy", "uncertainty", "--checkpoint", "missing.pth", "--shots", "7"],
            "has only 6 annotated",
        ),
        (["--strategy", "disagreement"], "--strategy disagreement needs --checkpoint"),
        (
            ["--strategy", "disagreement", "--checkpoint", "missing.pth", "--shots", "7"],
            "--shots 7: video bear has only 6 annotated frames (6 frames)",
        ),
        (
            ["--strategy", "uniform", "--checkpoint", "missing.pth"],
            "used only by --strategy uncertainty or disagreement",
        ),
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
