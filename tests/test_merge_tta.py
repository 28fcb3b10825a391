"""The fused merge of bidirectional propagation and test-time augmentation (flip, scales).

Each is checked against a hand combination of plain engine runs on a tiny random STCN.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import draw_frame
from twoshot.cli import main as cli_main
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import make_davis
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.frames import PropagationResult
from twoshot.inference.schedule import fused_runs, fusion_weights
from twoshot.model import STCN, build_model

CONFIG = InferenceConfig(size=-1, mem_every=2, device="cpu", key_batch=1)
A, B, T = 2, 8, 11


@pytest.fixture(scope="module")
def model() -> STCN:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


@pytest.fixture(scope="module")
def video() -> tuple[np.ndarray, np.ndarray]:
    pairs = [draw_frame(48, 64, t) for t in range(T)]
    return np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])


def _run(
    model: STCN,
    frames: np.ndarray,
    masks: dict[int, np.ndarray],
    direction: str = "forward",
    **changes: object,
) -> PropagationResult:
    engine = PropagationEngine(model, dataclasses.replace(CONFIG, **changes))  # type: ignore[arg-type]
    return engine.propagate(frames, masks, direction=direction, probabilities=True)


def test_fused_schedule_covers_each_gap_from_both_sides() -> None:
    runs = fused_runs(10, [2, 6], None, mem_every=5, include_last=False)
    summary = [(r.source, r.direction, [s.frame for s in r.steps if s.emit]) for r in runs]
    assert summary == [(2, -1, [1, 0]), (2, 1, [3, 4, 5]), (6, -1, [5, 4, 3]), (6, 1, [7, 8, 9])]
    assert runs[1].weights == {3: 0.75, 4: 0.5, 5: 0.25} and runs[2].weights == {3: 0.25, 4: 0.5, 5: 0.75}
    assert fusion_weights(3, 2, 6) == (0.75, 0.25)
    assert fused_runs(4, [1, 2], None, mem_every=5, include_last=False)[0].source == 1  # no gap: no runs


@pytest.mark.parametrize("kind", ["stcn", "cutie"])
def test_fused_merge_equals_hand_combination_of_two_runs(
    kind: str, model: STCN, video: tuple[np.ndarray, np.ndarray]
) -> None:
    if kind == "cutie":
        torch.manual_seed(0)
        model = build_model(load_config("cutie-tiny").model).eval()  # type: ignore[assignment]
    frames, labels = video
    given = {A: labels[A], B: labels[B]}
    fused = _run(model, frames, given, direction="bidirectional", merge="fused")
    nearest = _run(model, frames, given, direction="bidirectional")
    # The two single-direction runs, each a forward propagation over its own frames.
    fwd = _run(model, frames[A:B], {0: labels[A]}).probabilities
    bwd = _run(model, frames[B:A:-1].copy(), {0: labels[B]}).probabilities
    assert fwd is not None and bwd is not None and fused.probabilities is not None
    for t in range(A + 1, B):
        wa, wb = fusion_weights(t, A, B)
        expected = wa * fwd[t - A] + wb * bwd[B - t]
        np.testing.assert_allclose(fused.probabilities[t], expected, atol=1e-5)
        margin = np.sort(expected, axis=0)
        clear = margin[-1] - margin[-2] > 1e-4
        assert np.array_equal(fused.masks[t][clear], expected.argmax(0)[clear])
        assert fused.sources[t] == (A if wa > wb else B)
    # Outside the gap and on the labeled frames: the paper's rule, unchanged.
    outside = [t for t in range(T) if not A < t < B]
    np.testing.assert_array_equal(fused.masks[outside], nearest.masks[outside])
    assert fused.stats.key_encodes == T  # each frame encoded once, shared by both directions


def test_flip_equals_average_with_the_mirrored_run(model: STCN, video: tuple[np.ndarray, np.ndarray]) -> None:
    frames, labels = video
    result = _run(model, frames, {0: labels[0]}, flip=True)
    plain = _run(model, frames, {0: labels[0]}).probabilities
    mirrored = _run(model, frames[:, :, ::-1].copy(), {0: labels[0][:, ::-1].copy()}).probabilities
    assert plain is not None and mirrored is not None and result.probabilities is not None
    expected = (plain + mirrored[..., ::-1]) / 2
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(result.masks, expected.argmax(1).astype(np.uint8))
    assert result.stats.key_encodes == 2 * T


def test_scales_equal_average_of_runs_at_each_size(model: STCN, video: tuple[np.ndarray, np.ndarray]) -> None:
    frames, labels = video
    given = {A: labels[A], B: labels[B]}
    result = _run(model, frames, given, direction="bidirectional", scales=[1.0, 1.5])
    plain = _run(model, frames, given, direction="bidirectional").probabilities
    larger = _run(model, frames, given, direction="bidirectional", size=72).probabilities  # 48 x 1.5
    assert plain is not None and larger is not None and result.probabilities is not None
    np.testing.assert_allclose(result.probabilities, (plain + larger) / 2, atol=1e-6)
    np.testing.assert_array_equal(result.masks[[A, B]], labels[[A, B]])  # labeled frames kept


def test_default_settings_take_the_plain_path(model: STCN, video: tuple[np.ndarray, np.ndarray]) -> None:
    frames, labels = video
    given = {A: labels[A], B: labels[B]}
    explicit = _run(
        model, frames, given, direction="bidirectional", merge="nearest", flip=False, scales=[1.0]
    )
    default = _run(model, frames, given, direction="bidirectional")
    np.testing.assert_array_equal(explicit.masks, default.masks)
    assert explicit.probabilities is not None and default.probabilities is not None
    assert np.array_equal(explicit.probabilities, default.probabilities)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"scales": [1.0, 0.0]}, "every factor must be above 0"),
        ({"scales": [-0.5]}, "every factor must be above 0"),
        ({"scales": []}, "inference.scales is empty"),
        ({"merge": "average"}, "choose one of nearest, fused"),
    ],
)
def test_bad_settings_are_refused_before_work(model: STCN, changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PropagationEngine(model, dataclasses.replace(CONFIG, **changes))


def test_cli_refuses_a_bad_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 4}, size=(32, 32), object_ids=(1,))
    # The settings are checked before the weights are even looked for.
    args = ["--checkpoint", str(tmp_path / "missing.pth"), "--data", str(data.root), "--scales", "1", "0"]
    code = cli_main(["infer", *args, "--split", "train", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "every factor must be above 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
