"""The two training phases of the two-shot method as :class:`TrainingRegime` hooks (DESIGN §2).

Phase 1 trains on the labeled frames only up to iteration ``end_warm`` (0-based, included, as
the paper's code), then on clips that start at a labeled frame and run over all frames, with
the unlabeled frames' targets taken from an EMA teacher where it is confident. Phase 2
trains on the pseudo-label bank and, from ``phase2_start_update`` on, lets the model's own
confident predictions overwrite the bank's targets; with ``write_back`` they also overwrite
the bank's files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from twoshot.config import TwoShotConfig
from twoshot.data.batch import ClipBatch
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.train.forward import ClipOutput, forward_batch
from twoshot.train.regimes import SupervisedRegime
from twoshot.train.targets import IGNORE, confident_labels, pseudo_label_targets, refine_targets
from twoshot.train.teacher import ema_update, make_teacher
from twoshot.train.write_back import BankWriter


class _Averages:
    """Running sums of scalars between two logging steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: float) -> None:
        if value == value:  # skip NaN (nothing to measure in this batch)
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return means


class Phase1Regime(SupervisedRegime):
    """Two-shot phase 1: labeled-frame warm-up, then EMA-teacher pseudo labels.

    warmup_dataset: clips from labeled frames only (VOSClipDataset sampling ``labeled_only``).
    clip_dataset: clips starting at a labeled frame over all frames (sampling ``phase1``), whose
    unlabeled frames have ``cls_gt`` -1 and ``labeled`` False.
    """

    name = "phase1"

    def __init__(
        self, warmup_dataset: Dataset[Any], clip_dataset: Dataset[Any], settings: TwoShotConfig
    ) -> None:
        self.warmup_dataset = warmup_dataset
        self.clip_dataset = clip_dataset
        self.settings = settings
        self.teacher: nn.Module | None = None
        self.averages = _Averages()

    def start(self, model: nn.Module, device: torch.device) -> None:
        """Make the EMA teacher from the initial student."""
        if self.settings.use_teacher:
            self.teacher = make_teacher(model).to(device)

    def dataset(self, it: int) -> Dataset[Any]:
        """Labeled-only clips up to ``end_warm`` (included), phase-1 clips after it."""
        return self.clip_dataset if self.after_warmup(it) else self.warmup_dataset

    def after_warmup(self, it: int) -> bool:
        """Whether 0-based iteration ``it`` trains on phase-1 clips: ``it > end_warm``, the
        paper's test (its model/model.py switches data and targets on ``it > end_warm``)."""
        return it > self.settings.end_warm

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        """Fill unlabeled frames with confident teacher (or student) labels; -1 elsewhere.

        A pixel takes object k where its probability is >= ``pseudo_threshold``, background
        where 1 - (sum of the K objects' probabilities) is, else -1 (any K).
        """
        if not self.after_warmup(it):
            return batch
        if self.teacher is not None:
            probs = forward_batch(self.teacher, batch).probs
        else:
            probs = outputs.probs.detach()
        targets = pseudo_label_targets(batch.cls_gt, batch.labeled, probs, self.settings.pseudo_threshold)
        self._measure(batch, probs, targets)
        return batch.replace(cls_gt=targets)

    def _measure(self, batch: ClipBatch, probs: torch.Tensor, targets: torch.Tensor) -> None:
        unlabeled = ~batch.labeled[:, 1:]
        if unlabeled.any():
            self.averages.add(
                "pseudo_label_share", float((targets[:, 1:][unlabeled] != IGNORE).float().mean())
            )
        # Accuracy only where ground truth happens to exist: labeled frames 1..T-1 of the
        # clip, labeled as if they were not. It is logged, never used in the loss.
        labeled = batch.labeled[:, 1:]
        if labeled.any():
            guess = confident_labels(probs.flatten(0, 1), self.settings.pseudo_threshold)
            guess = guess.view_as(targets[:, 1:])[labeled]
            truth = batch.cls_gt[:, 1:][labeled]
            confident = (guess != IGNORE) & (truth != IGNORE)
            if confident.any():
                self.averages.add(
                    "pseudo_label_accuracy", float((guess[confident] == truth[confident]).float().mean())
                )

    def after_step(self, model: nn.Module, it: int) -> None:
        """EMA update of the teacher: t = a t + (1 - a) s, a = min(1 - 1/(it+1), ema_alpha),
        over parameters (and buffers too with ``ema_buffers``)."""
        if self.teacher is not None:
            ema_update(self.teacher, model, it, self.settings.ema_alpha, self.settings.ema_buffers)

    def extra_state(self) -> dict[str, Any]:
        """The teacher's weights."""
        return {"teacher": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the teacher's weights."""
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])

    def log_scalars(self) -> dict[str, float]:
        """Mean pseudo-label share and accuracy since the last call."""
        return self.averages.pop()


class Phase2Regime(SupervisedRegime):
    """Two-shot phase 2: train on the pseudo-label bank with online refinement.

    settings: the two-shot settings. bank / videos: the pseudo-label bank folder and the
    training videos read from it (``frame_names`` name its PNGs); needed only with
    ``settings.write_back``, which then writes the refined labels of unlabeled frames back
    into the bank (:mod:`twoshot.train.write_back`; UserError if either is missing).
    """

    name = "phase2"

    def __init__(
        self,
        settings: TwoShotConfig,
        bank: str | Path | None = None,
        videos: Sequence[VideoSequence] | None = None,
    ) -> None:
        self.settings = settings
        self.averages = _Averages()
        self.writer: BankWriter | None = None
        if settings.write_back:
            if bank is None or videos is None:
                raise UserError(
                    "twoshot.write_back: phase 2 needs the bank folder and its "
                    "videos to write refined labels back"
                )
            self.writer = BankWriter(bank, videos)

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        """From ``phase2_start_update`` on, confident predictions overwrite frames 1..T-1
        (and, with write-back, the bank's PNGs of those frames)."""
        if it < self.settings.phase2_start_update:
            return batch
        probs = outputs.probs.detach()
        targets = refine_targets(batch.cls_gt, probs, self.settings.refine_threshold)
        self.averages.add("refined_share", float((targets[:, 1:] != batch.cls_gt[:, 1:]).float().mean()))
        if self.writer is not None:
            confident = confident_labels(probs.flatten(0, 1), self.settings.refine_threshold)
            stats = self.writer.write_batch(batch, confident.view_as(batch.cls_gt[:, 1:]))
            self.averages.add("written_back_pixels", float(stats.pixels))
            self.averages.add("written_back_files", float(stats.files))
            if stats.visited:
                self.averages.add("written_back_share", stats.pixels / stats.visited)
        return batch.replace(cls_gt=targets)

    def log_scalars(self) -> dict[str, float]:
        """Means since the last call: share of target pixels changed by refinement; with
        write-back, bank pixels and files changed per iteration and the share of the visited
        frames' pixels changed. Also records the write-backs in the bank manifest."""
        if self.writer is not None:
            self.writer.flush()
        return self.averages.pop()
