"""Two-shot targets: EMA teacher, confident pseudo labels, phase-2 refinement."""

from __future__ import annotations

import torch
from torch import nn

from twoshot.train.targets import IGNORE, confident_labels, label_share, pseudo_label_targets, refine_targets
from twoshot.train.teacher import ema_alpha, ema_update, make_teacher


def test_ema_alpha_schedule() -> None:
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert ema_alpha(9) == 0.9
    assert ema_alpha(10_000) == 0.995


def _pair() -> tuple[nn.Module, nn.Module]:
    """A student and its teacher that differ in a weight and in BatchNorm's buffers."""
    student = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        teacher[0].weight.fill_(1.0)
        student[0].weight.fill_(3.0)
        student[1].running_mean.fill_(2.0)
        student[1].num_batches_tracked.fill_(7)
    return student, teacher


def test_ema_update_averages_parameters_only_as_the_paper() -> None:
    student, teacher = _pair()
    alpha = ema_update(teacher, student, iteration=3)  # alpha = 1 - 1/4
    assert alpha == 0.75
    assert teacher[0].weight.item() == 0.75 * 1.0 + 0.25 * 3.0
    assert teacher[0].bias.item() == student[0].bias.item()  # equal from the start: stays equal
    # The teacher's BatchNorm statistics stay those it was made with.
    assert teacher[1].running_mean.item() == 0.0 and teacher[1].running_var.item() == 1.0
    assert int(teacher[1].num_batches_tracked) == 0


def test_ema_update_with_buffers_averages_float_buffers_too() -> None:
    student, teacher = _pair()
    assert ema_update(teacher, student, iteration=3, buffers=True) == 0.75
    assert teacher[0].weight.item() == 0.75 * 1.0 + 0.25 * 3.0
    assert teacher[1].running_mean.item() == 0.25 * 2.0
    assert int(teacher[1].num_batches_tracked) == 7


def test_confident_labels_thresholds_each_class() -> None:
    # Pixels: confident background, confident target, confident second, unsure.
    prob = torch.tensor([[0.95, 0.02, 0.03, 0.5], [0.03, 0.93, 0.02, 0.4], [0.02, 0.05, 0.95, 0.1]]).view(
        1, 3, 1, 4
    )
    assert confident_labels(prob, 0.9).tolist() == [[[0, 1, 2, IGNORE]]]
    assert confident_labels(prob, 0.94).tolist() == [[[0, IGNORE, 2, IGNORE]]]


def test_pseudo_targets_keep_ground_truth_on_labeled_frames() -> None:
    cls_gt = torch.tensor([[0, 1], [IGNORE, IGNORE], [2, 0]]).view(1, 3, 1, 2)
    labeled = torch.tensor([[True, False, True]])
    teacher = torch.zeros(1, 2, 3, 1, 2)
    teacher[0, :, 1] = 0.97  # teacher confident "target" everywhere
    teacher[0, :, 0] = 0.03
    targets = pseudo_label_targets(cls_gt, labeled, teacher, 0.9)
    assert targets.view(3, 2).tolist() == [[0, 1], [1, 1], [2, 0]]
    assert label_share(targets, labeled) == 1.0


def test_refinement_overwrites_only_confident_pixels() -> None:
    cls_gt = torch.tensor([[1, 1], [0, 2], [2, 2]]).view(1, 3, 1, 2)
    prob = torch.full((1, 2, 3, 1, 2), 1 / 3)
    prob[0, 0, :, 0, 0] = torch.tensor([0.995, 0.003, 0.002])  # frame 1, pixel 0: sure background
    prob[0, 1, :, 0, 1] = torch.tensor([0.001, 0.998, 0.001])  # frame 2, pixel 1: sure target
    targets = refine_targets(cls_gt, prob, 0.99)
    assert targets.view(3, 2).tolist() == [[1, 1], [0, 2], [2, 1]]


def test_refinement_with_three_objects() -> None:
    # One refined frame of 4 pixels; classes background and objects 1-3.
    cls_gt = torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1]]).view(1, 2, 1, 4)
    prob = torch.tensor(
        [
            [0.001, 0.001, 0.997, 0.001],  # sure of object 2
            [0.002, 0.002, 0.002, 0.994],  # sure of object 3
            [0.995, 0.002, 0.002, 0.001],  # sure of background (1 - p1 - p2 - p3 = 0.995)
            [0.250, 0.250, 0.250, 0.250],  # unsure: the bank's label stays
        ]
    ).T.reshape(1, 1, 4, 1, 4)
    assert refine_targets(cls_gt, prob, 0.99).view(2, 4).tolist() == [[0, 1, 2, 3], [2, 3, 0, 1]]
