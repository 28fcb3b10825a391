"""The EMA teacher of two-shot phase 1: a frozen copy of the student, averaged over steps."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(iteration: int, max_alpha: float = 0.995) -> float:
    """Decay used after step ``iteration`` (0-based): min(1 - 1/(it + 1), max_alpha).

    Early on the teacher follows the student closely (alpha 0 at it 0, 0.5 at it 1 ...).
    """
    return min(1.0 - 1.0 / (iteration + 1), max_alpha)


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` in eval mode with gradients off."""
    teacher = copy.deepcopy(getattr(student, "module", student))
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, iteration: int, max_alpha: float = 0.995, buffers: bool = False
) -> float:
    """teacher = a * teacher + (1 - a) * student for every parameter; returns the alpha used.

    buffers False (the paper's rule): the teacher's buffers (BatchNorm running statistics)
    keep the values they had when the teacher was made. True: float buffers are averaged like
    parameters and integer buffers (num_batches_tracked) copied, which lets the teacher follow
    a student whose BatchNorm trains (``freeze_bn: false``).
    """
    alpha = ema_alpha(iteration, max_alpha)
    source = getattr(student, "module", student)
    for mine, theirs in zip(teacher.parameters(), source.parameters(), strict=True):
        mine.mul_(alpha).add_(theirs.detach(), alpha=1.0 - alpha)
    if buffers:
        student_buffers = dict(source.named_buffers())
        for name, value in teacher.named_buffers():
            new = student_buffers[name]
            if value.dtype.is_floating_point:
                value.mul_(alpha).add_(new, alpha=1.0 - alpha)
            else:
                value.copy_(new)
    return alpha
