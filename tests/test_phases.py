"""Two-shot phase modes: dataset switch, teacher pseudo labels, EMA, refinement."""

from __future__ import annotations

import pytest
import torch

from twoshot.config import TwoShotConfig, load_config
from twoshot.data.batch import ClipBatch
from twoshot.model import build_model
from twoshot.train.forward import ClipOutput, forward_batch
from twoshot.train.phases import Phase1Mode, Phase2Mode
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


def test_phase1_switches_dataset_at_end_of_warmup() -> None:
    mode = Phase1Mode("warm", "clips", TwoShotConfig(end_warm=10))  # type: ignore[arg-type]
    assert mode.dataset(9) == "warm" and mode.dataset(10) == "clips"


def test_phase1_targets_come_from_the_teacher_where_confident() -> None:
    model = build_model(load_config("tiny").model).eval()
    settings = TwoShotConfig(end_warm=0, pseudo_threshold=0.5)
    mode = Phase1Mode(None, None, settings)  # type: ignore[arg-type]
    mode.start(model, torch.device("cpu"))
    batch = _batch([True, False, True])
    with torch.no_grad():
        outputs = forward_batch(model, batch)
        prepared = mode.prepare_targets(batch, outputs, it=5)
        expected = confident_labels(forward_batch(mode.teacher, batch).probs[:, 0], 0.5)
    assert torch.equal(prepared.cls_gt[:, 0], batch.cls_gt[:, 0])
    assert torch.equal(prepared.cls_gt[:, 2], batch.cls_gt[:, 2])  # labeled: ground truth
    assert torch.equal(prepared.cls_gt[:, 1], expected)  # unlabeled: teacher
    assert prepared.rgb is batch.rgb and batch.cls_gt[:, 1].eq(IGNORE).all()  # a new batch
    scalars = mode.log_scalars()
    assert 0.0 <= scalars["pseudo_label_share"] <= 1.0
    assert "pseudo_label_accuracy" in scalars or (expected == IGNORE).all()
    assert mode.log_scalars() == {}


def test_phase1_leaves_warmup_batches_alone_and_updates_the_teacher() -> None:
    model = build_model(load_config("tiny").model)
    mode = Phase1Mode(None, None, TwoShotConfig(end_warm=100))  # type: ignore[arg-type]
    mode.start(model, torch.device("cpu"))
    batch = _batch([True, True, True])
    assert mode.prepare_targets(batch, None, it=3) is batch  # type: ignore[arg-type]
    with torch.no_grad():
        model.decoder.pred.bias.add_(1.0)
    before = mode.teacher.decoder.pred.bias.clone()
    mode.after_step(model, it=1)  # alpha 0.5
    torch.testing.assert_close(mode.teacher.decoder.pred.bias, before + 0.5)
    restored = Phase1Mode(None, None, TwoShotConfig())  # type: ignore[arg-type]
    restored.start(build_model(load_config("tiny").model), torch.device("cpu"))
    restored.load_extra_state(mode.extra_state())
    assert torch.equal(restored.teacher.decoder.pred.bias, mode.teacher.decoder.pred.bias)


def test_phase1_without_teacher_uses_the_student() -> None:
    model = build_model(load_config("tiny").model).eval()
    mode = Phase1Mode(None, None, TwoShotConfig(end_warm=0, use_teacher=False, pseudo_threshold=0.5))  # type: ignore[arg-type]
    mode.start(model, torch.device("cpu"))
    assert mode.teacher is None and mode.extra_state() == {}
    batch = _batch([True, False, False])
    with torch.no_grad():
        outputs = forward_batch(model, batch)
    prepared = mode.prepare_targets(batch, outputs, it=1)
    assert torch.equal(prepared.cls_gt[:, 2], confident_labels(outputs.probs[:, 1], 0.5))


def test_phase2_refines_only_after_the_start_iteration() -> None:
    mode = Phase2Mode(TwoShotConfig(phase2_start_update=10, refine_threshold=0.99))
    batch = _batch([True, True, True])
    probs = torch.zeros(2, 2, 3, 32, 32)
    probs[:, :, 0] = 1.0  # the model is sure everything is background

    outputs = ClipOutput(probs.log(), probs)
    assert mode.prepare_targets(batch, outputs, it=9) is batch
    refined = mode.prepare_targets(batch, outputs, it=10).cls_gt
    assert (refined[:, 1:] == 0).all() and torch.equal(refined[:, 0], batch.cls_gt[:, 0])
    assert mode.log_scalars()["refined_share"] > 0


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
    mode = Phase1Mode(None, None, TwoShotConfig(end_warm=0, pseudo_threshold=0.9))  # type: ignore[arg-type]
    mode.teacher = FixedTeacher(probs)
    student = ClipOutput(torch.zeros_like(probs), torch.full_like(probs, 0.25))
    prepared = mode.prepare_targets(batch, student, it=1)
    assert prepared.cls_gt[0, 1, 0].tolist() == [0, 1, 2, 3, IGNORE, IGNORE, IGNORE]
    assert torch.equal(prepared.cls_gt[0, 0], truth[0]) and torch.equal(prepared.cls_gt[0, 2], truth[2])
    assert mode.log_scalars()["pseudo_label_share"] == pytest.approx(4 / 7)
