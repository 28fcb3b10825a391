"""Two-shot phase regimes: dataset switch, teacher pseudo labels, EMA, refinement."""

from __future__ import annotations

import pytest
import torch

from twoshot.config import TwoShotConfig, load_config
from twoshot.data.batch import ClipBatch
from twoshot.model import build_model
from twoshot.train.forward import ClipOutput, forward_batch
from twoshot.train.phases import Phase1Regime, Phase2Regime
from twoshot.train.targets import IGNORE, confident_labels


def _batch(labeled: list[bool]) -> ClipBatch:
    torch.manual_seed(0)
    b, t, s = 2, len(labeled), 32
    gt = torch.zeros(b, t, s, s)
    gt[:, :, 8:20, 8:20] = 1
    cls = gt.long()
    flags = torch.tensor([labeled] * b)
    cls[~flags] = IGNORE
    return ClipBatch(
        rgb=torch.randn(b, t, 3, s, s),
        first_masks=torch.stack([gt[:, 0], torch.zeros_like(gt[:, 0])], dim=1),
        cls_gt=cls,
        selector=torch.tensor([[1.0, 0.0]] * b),
        labeled=flags,
        names=("a", "b"),
        frames=torch.arange(t).repeat(b, 1),
    )


def test_phase1_switches_after_the_end_of_warmup_as_the_paper() -> None:
    # The paper's code trains on labeled-only clips while ``it <= end_warm`` (0-based).
    regime = Phase1Regime("warm", "clips", TwoShotConfig(end_warm=10))  # type: ignore[arg-type]
    assert [regime.dataset(it) for it in (0, 9, 10, 11, 12)] == ["warm", "warm", "warm", "clips", "clips"]
    batch = _batch([True, False, True])
    assert regime.prepare_targets(batch, None, it=10) is batch  # type: ignore[arg-type]


def _two_object_batch() -> ClipBatch:
    """Two 3-frame clips at 32 x 32: clip 0 has two objects and frame 1 unlabeled, clip 1
    one object and frames 1-2 unlabeled."""
    torch.manual_seed(0)
    b, t, s = 2, 3, 32
    cls = torch.zeros(b, t, s, s, dtype=torch.long)
    cls[:, :, 8:20, 8:20] = 1
    cls[0, :, 20:30, 18:30] = 2
    labeled = torch.tensor([[True, False, True], [True, False, False]])
    cls[~labeled] = IGNORE
    return ClipBatch(
        rgb=torch.randn(b, t, 3, s, s),
        first_masks=torch.stack([cls[:, 0] == 1, cls[:, 0] == 2], dim=1).float(),
        cls_gt=cls,
        selector=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        labeled=labeled,
        names=("a", "b"),
        frames=torch.arange(t).repeat(b, 1),
    )


def _paper_rule(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """The paper's pseudo label of one frame, written as its code does it: everything -1,
    then object 2 where p2 >= t, object 1 where p1 >= t, background where 1 - p1 - p2 >= t.
    probs [3, H, W] (background, object 1, object 2); returns int64 [H, W]."""
    labels = torch.full(probs.shape[1:], IGNORE, dtype=torch.long)
    labels[probs[2] >= threshold] = 2
    labels[probs[1] >= threshold] = 1
    labels[(1 - probs[1] - probs[2]) >= threshold] = 0
    return labels


def test_phase1_targets_come_from_the_teacher_not_the_student() -> None:
    torch.manual_seed(0)
    student = build_model(load_config("tiny").model).eval()
    regime = Phase1Regime(None, None, TwoShotConfig(end_warm=0, pseudo_threshold=0.9))  # type: ignore[arg-type]
    regime.start(student, torch.device("cpu"))
    assert regime.teacher is not None
    # A teacher unlike the student: other random weights, its decoder's output sharpened so
    # that many pixels are confident (the student's are not: none reaches 0.9).
    torch.manual_seed(2)
    regime.teacher.load_state_dict(build_model(load_config("tiny").model).state_dict())
    with torch.no_grad():
        regime.teacher.decoder.pred.weight.mul_(30.0)
        regime.teacher.decoder.pred.bias.mul_(30.0)
    batch = _two_object_batch()
    with torch.no_grad():
        outputs = forward_batch(student, batch)
        prepared = regime.prepare_targets(batch, outputs, it=1)
        _, teacher_probs = regime.teacher.clip_forward(batch.rgb, batch.first_masks, batch.selector)
    expected = batch.cls_gt.clone()
    for clip, frame in ((0, 1), (1, 1), (1, 2)):  # the unlabeled frames
        expected[clip, frame] = _paper_rule(teacher_probs[clip, frame - 1], 0.9)
    assert torch.equal(prepared.cls_gt, expected)
    unlabeled = prepared.cls_gt[~batch.labeled]
    ignored, background, target = (int((unlabeled == k).sum()) for k in (IGNORE, 0, 1))
    # 3 frames x 1024 pixels (about 770 / 1980 / 320 here): every kind occurs, by far
    assert ignored + background + target == 3072 and min(ignored, background, target) >= 100
    assert float(outputs.probs.max(dim=2).values.max()) < 0.9  # the student labels nothing
    assert prepared.rgb is batch.rgb and batch.cls_gt[:, 1].eq(IGNORE).all()  # a new batch
    scalars = regime.log_scalars()
    assert scalars["pseudo_label_share"] == pytest.approx((background + target) / 3072)
    assert regime.log_scalars() == {}


def test_phase1_leaves_warmup_batches_alone_and_updates_the_teacher() -> None:
    model = build_model(load_config("tiny").model)
    regime = Phase1Regime(None, None, TwoShotConfig(end_warm=100))  # type: ignore[arg-type]
    regime.start(model, torch.device("cpu"))
    batch = _batch([True, True, True])
    assert regime.prepare_targets(batch, None, it=3) is batch  # type: ignore[arg-type]
    with torch.no_grad():
        model.decoder.pred.bias.add_(1.0)
    before = regime.teacher.decoder.pred.bias.clone()
    regime.after_step(model, it=1)  # alpha 0.5
    torch.testing.assert_close(regime.teacher.decoder.pred.bias, before + 0.5)
    restored = Phase1Regime(None, None, TwoShotConfig())  # type: ignore[arg-type]
    restored.start(build_model(load_config("tiny").model), torch.device("cpu"))
    restored.load_extra_state(regime.extra_state())
    assert torch.equal(restored.teacher.decoder.pred.bias, regime.teacher.decoder.pred.bias)


def test_phase1_without_teacher_uses_the_student() -> None:
    model = build_model(load_config("tiny").model).eval()
    regime = Phase1Regime(None, None, TwoShotConfig(end_warm=0, use_teacher=False, pseudo_threshold=0.5))  # type: ignore[arg-type]
    regime.start(model, torch.device("cpu"))
    assert regime.teacher is None and regime.extra_state() == {}
    batch = _batch([True, False, False])
    with torch.no_grad():
        outputs = forward_batch(model, batch)
    prepared = regime.prepare_targets(batch, outputs, it=1)
    assert torch.equal(prepared.cls_gt[:, 2], confident_labels(outputs.probs[:, 1], 0.5))


def test_phase2_refines_only_after_the_start_iteration() -> None:
    regime = Phase2Regime(TwoShotConfig(phase2_start_update=10, refine_threshold=0.99))
    batch = _batch([True, True, True])
    probs = torch.zeros(2, 2, 3, 32, 32)
    probs[:, :, 0] = 1.0  # the model is sure everything is background

    outputs = ClipOutput(probs.log(), probs)
    assert regime.prepare_targets(batch, outputs, it=9) is batch
    refined = regime.prepare_targets(batch, outputs, it=10).cls_gt
    assert (refined[:, 1:] == 0).all() and torch.equal(refined[:, 0], batch.cls_gt[:, 0])
    assert regime.log_scalars()["refined_share"] > 0


class FixedTeacher(torch.nn.Module):
    """A teacher whose clip predictions are given: ``probs`` [B, T-1, K+1, H, W]."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.probs = probs

    def forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        assert first_masks.shape[1] == selector.shape[1] == self.probs.shape[2] - 1
        return self.probs.log(), self.probs, {}


def test_phase1_teacher_targets_with_three_objects() -> None:
    # One clip of 3 frames at 1 x 7 pixels with 3 objects; frame 1 is unlabeled, frame 2 labeled.
    # The teacher's probabilities (background, objects 1-3) for frame 1, pixel by pixel:
    frame1 = [
        [0.95, 0.02, 0.02, 0.01],  # background: 1 - (p1 + p2 + p3) = 0.95 >= 0.9
        [0.04, 0.92, 0.02, 0.02],  # object 1
        [0.05, 0.03, 0.90, 0.02],  # object 2 at exactly the threshold
        [0.01, 0.01, 0.01, 0.97],  # object 3
        [0.50, 0.30, 0.10, 0.10],  # nothing confident: ignored
        [0.05, 0.89, 0.06, 0.00],  # object 1 just below: ignored
        [0.88, 0.04, 0.04, 0.04],  # background just below (the objects sum to 0.12): ignored
    ]
    frame2 = [[0.0, 0.0, 0.0, 1.0]] * 7  # ignored: frame 2 keeps its ground truth
    probs = torch.tensor([frame1, frame2]).permute(0, 2, 1)[None, :, :, None, :]  # [1, 2, 4, 1, 7]
    truth = torch.tensor([[[0, 1, 2, 3, 0, 1, 2]], [[-1] * 7], [[3, 3, 2, 2, 1, 1, 0]]])
    batch = ClipBatch(
        rgb=torch.zeros(1, 3, 3, 1, 7),
        first_masks=torch.stack([truth[0] == k for k in (1, 2, 3)], dim=0).float()[None],
        cls_gt=truth[None],
        selector=torch.ones(1, 3),
        labeled=torch.tensor([[True, False, True]]),
        names=("clip",),
        frames=torch.tensor([[4, 5, 6]]),
    )
    regime = Phase1Regime(None, None, TwoShotConfig(end_warm=0, pseudo_threshold=0.9))  # type: ignore[arg-type]
    regime.teacher = FixedTeacher(probs)
    student = ClipOutput(torch.zeros_like(probs), torch.full_like(probs, 0.25))
    prepared = regime.prepare_targets(batch, student, it=1)
    assert prepared.cls_gt[0, 1, 0].tolist() == [0, 1, 2, 3, IGNORE, IGNORE, IGNORE]
    assert torch.equal(prepared.cls_gt[0, 0], truth[0]) and torch.equal(prepared.cls_gt[0, 2], truth[2])
    assert regime.log_scalars()["pseudo_label_share"] == pytest.approx(4 / 7)
