"""The trainer's extension point: a :class:`TrainingRegime` decides what is trained on and how
targets are made; the trainer owns everything else (optimiser, AMP, schedule, checkpoints,
distribution, logging).

Plain STCN training is :class:`SupervisedRegime` (every hook a no-op). The two-shot phases
subclass it: phase 1 switches from a labeled-frames-only dataset to phase-1 clips at the
warm-up boundary, fills unlabeled frames' targets from an EMA teacher and updates the
teacher after each step; phase 2 refines the targets with the model's confident predictions.

Hook order in one iteration ``it`` (0-based):

1. ``dataset(it)`` -> the dataset the next batch comes from (``None``: the stage's dataset);
2. forward pass of the student on the batch -> :class:`~twoshot.train.forward.ClipOutput`;
3. ``prepare_targets(batch, outputs, it)`` under ``torch.no_grad()`` (and autocast when AMP
   is on) -> the batch (a :class:`~twoshot.data.batch.ClipBatch`) whose ``cls_gt`` the
   loss uses;
4. loss, backward, optimiser step;
5. ``after_step(model, it)`` with the bare STCN (no DDP wrapper).

``start(model, device)`` runs once before the first iteration (after ``--init`` weights are
loaded, before a resumed checkpoint's state is restored); ``extra_state()`` is saved in every
training checkpoint and handed back to ``load_extra_state`` on ``--resume``; ``log_scalars()``
is read at each logging step and written under ``mode/<name>``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset

from twoshot.data.batch import ClipBatch
from twoshot.train.forward import ClipOutput


@runtime_checkable
class TrainingRegime(Protocol):
    """What a training phase customises. See the module docstring for the call order."""

    name: str

    def start(self, model: nn.Module, device: torch.device) -> None:
        """Called once before training with the bare STCN (e.g. copy it into a teacher)."""

    def dataset(self, it: int) -> Dataset[Any] | None:
        """Dataset for iteration ``it``; None keeps the stage's dataset.

        Must be a pure function of ``it`` that returns the *same object* for every iteration
        of one phase: the trainer starts a new epoch (and a new DataLoader) whenever the object
        changes, and relies on this to resume exactly.
        """

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        """Targets for the loss, between the forward pass and the loss.

        batch: the training batch on the device (``cls_gt`` int64 [B,T,H,W] with -1 =
        unknown, ``selector`` [B,K], ``labeled`` bool [B,T], ...). outputs: the student's
        predictions for frames 1..T-1 (with grad; called under no_grad). Return the batch
        with ``cls_gt`` (0 background, k the object of slot k, -1 ignored) filled in for the
        frames to train on: ``batch.replace(cls_gt=targets)``.
        """

    def after_step(self, model: nn.Module, it: int) -> None:
        """After the optimiser step of iteration ``it`` (e.g. the EMA teacher update)."""

    def extra_state(self) -> dict[str, Any]:
        """State saved in training checkpoints (tensors and plain Python values only)."""

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned, when resuming."""

    def log_scalars(self) -> dict[str, float]:
        """Scalars to log now (e.g. share of pseudo-labeled pixels since the last call)."""


class SupervisedRegime:
    """Plain supervised STCN training: targets are the data's ``cls_gt`` as they come.

    Subclass it to override only the hooks a phase needs.
    """

    name = "supervised"

    def start(self, model: nn.Module, device: torch.device) -> None:
        """Nothing to set up."""

    def dataset(self, it: int) -> Dataset[Any] | None:
        """Always the stage's dataset."""
        return None

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        """The batch unchanged."""
        return batch

    def after_step(self, model: nn.Module, it: int) -> None:
        """Nothing to update."""

    def extra_state(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """No state to restore."""

    def log_scalars(self) -> dict[str, float]:
        """No extra scalars."""
        return {}
