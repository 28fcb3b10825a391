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
def ema_update(teacher: nn.Module, student: nn.Module, iteration: int, max_alpha: float = 0.995) -> float:
    """teacher = a * teacher + (1 - a) * student for every parameter and float buffer.

    Buffers of BatchNorm (running statistics) are averaged like parameters; integer buffers
    (num_batches_tracked) are copied. Returns the alpha used.
    """
    alpha = ema_alpha(iteration, max_alpha)
    source = getattr(student, "module", student)
    student_state = source.state_dict()
    for name, value in teacher.state_dict().items():
        new = student_state[name]
        if value.dtype.is_floating_point:
            value.mul_(alpha).add_(new.detach(), alpha=1.0 - alpha)
        else:
            value.copy_(new)
    return alpha
