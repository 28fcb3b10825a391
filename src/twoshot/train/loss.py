"""Bootstrapped cross-entropy (STCN) with ignored pixels (two-shot), and training IoU.

STCN's loss: per sample and per predicted frame, ``F.cross_entropy`` on the soft-aggregated
logits (background + K objects); plain CE before ``loss_start_warm``; afterwards the mean of
the hardest ``p`` fraction of pixels, ``p`` falling linearly from 1.0 to ``loss_top_p`` at
``loss_end_warm``. A sample uses the logit channels of its present objects only (STCN: a
sample without a second object uses background + target). The clip loss is the sum over
frames 1..T-1 of the mean over the batch.

Two-shot adds the label -1 (no target for this pixel): those pixels are removed *before* the
top-p selection, so ``p`` is a fraction of the labeled pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from twoshot.config import TrainConfig

IGNORE = -1


def bootstrap_p(it: int, start_warm: int, end_warm: int, top_p: float) -> float:
    """Fraction of the hardest pixels kept at iteration ``it`` (0-based).

    1.0 before ``start_warm``; then linear from 1.0 (at ``start_warm``) to ``top_p`` (at
    ``end_warm``); ``top_p`` after. Same formula as STCN's BootstrappedCE.
    """
    if it < start_warm:
        return 1.0
    if it >= end_warm or end_warm <= start_warm:
        return float(top_p)
    return float(top_p + (1.0 - top_p) * (end_warm - it) / (end_warm - start_warm))


def loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """The loss's precision: fp32 for fp16/bf16/fp32 logits (AMP), fp64 for fp64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


def bootstrapped_ce(
    logits: torch.Tensor, target: torch.Tensor, p: float, plain: bool = False
) -> torch.Tensor:
    """Bootstrapped CE of one frame of one sample.

    logits [C,H,W] (float, any dtype; computed in fp32, in fp64 when given fp64); target int64
    [H,W] with classes 0..C-1 and IGNORE (-1). ``plain``: mean over all labeled pixels (STCN
    before warm-up); otherwise the mean of the ``max(1, int(n*p))`` largest pixel losses of
    the n labeled ones.
    Returns a scalar tensor; 0 (still attached to ``logits``) when no pixel is labeled, so a
    fully ignored frame neither produces NaN nor disconnects the graph.
    """
    valid = target != IGNORE
    raw = F.cross_entropy(logits[None].to(loss_dtype(logits)), target[None].clamp(min=0), reduction="none")[0]
    raw = raw[valid]
    count = raw.numel()
    if count == 0:
        return logits.sum() * 0.0
    if plain or p >= 1.0:
        return raw.mean()
    kept, _ = torch.topk(raw, max(1, int(count * p)), sorted=False)
    return kept.mean()


def object_channels(selector: torch.Tensor) -> list[int]:
    """Per sample, the object slots its loss scores: 1 + the index of the last present slot
    (``selector > 0.5``), at least 1. selector [B, K]; one host sync.

    Present slots come first (the clip datasets fill them in order), so this is the number
    of objects, as the Cutie reference's ``num_objects`` and STCN's "second object or not".
    """
    present = (selector > 0.5).tolist()
    return [max([k + 1 for k, on in enumerate(row) if on] or [1]) for row in present]


@dataclass
class LossResult:
    """The clip loss and what is logged about it.

    total: scalar tensor to back-propagate. frames: per predicted frame (1..T-1) the batch-
    mean loss, detached. p: the bootstrap fraction used. terms: named parts of ``total``
    (detached; logged as ``train/loss_<name>``), for losses made of several terms.
    """

    total: torch.Tensor
    frames: list[torch.Tensor] = field(default_factory=list)
    p: float = 1.0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def clip_loss(
    logits: torch.Tensor, cls_gt: torch.Tensor, selector: torch.Tensor, it: int, config: TrainConfig
) -> LossResult:
    """STCN's training loss over frames 1..T-1 of a batch of clips.

    logits [B,T-1,K+1,H,W] (ClipOutput.logits); cls_gt int64 [B,T,H,W] with 0 background,
    k the object of slot k, -1 ignored (frame 0 is not scored); selector [B,K] (a sample is
    scored on background + :func:`object_channels` objects). ``it``: 0-based iteration
    (bootstrap schedule). Returns a :class:`LossResult`: total = sum over frames of the mean
    over samples.
    """
    batch, predicted = logits.shape[:2]
    p = bootstrap_p(it, config.loss_start_warm, config.loss_end_warm, config.loss_top_p)
    plain = it < config.loss_start_warm
    total = logits.new_zeros((), dtype=loss_dtype(logits))
    frames = []
    objects = object_channels(selector)  # one host sync, not one per sample
    for i in range(predicted):
        frame_loss = logits.new_zeros((), dtype=loss_dtype(logits))
        for j in range(batch):
            # A loop, as STCN: samples differ in object count and in labeled-pixel count.
            channels = objects[j] + 1
            frame_loss = (
                frame_loss + bootstrapped_ce(logits[j, i, :channels], cls_gt[j, i + 1], p, plain) / batch
            )
        frames.append(frame_loss.detach())
        total = total + frame_loss
    return LossResult(total, frames, p)


def iou_counts(probs: torch.Tensor, cls_gt: torch.Tensor, selector: torch.Tensor) -> dict[str, torch.Tensor]:
    """Intersection and union of thresholded predictions vs targets on labeled pixels.

    probs [B,T-1,K+1,H,W] (ClipOutput.probs); cls_gt [B,T,H,W]; selector [B,K].
    An object is predicted where its aggregated probability is > 0.5; pixels labeled -1 are
    left out; slots 2..K count only in samples where they hold an object.
    Returns detached scalar tensors summed over the batch: {"i", "u"} of slot 1 (the target)
    and, when K > 1, {"sec_i", "sec_u"} summed over slots 2..K (the other objects).
    """
    target = cls_gt[:, 1:]
    valid = target != IGNORE
    pred = probs[:, :, 1] > 0.5
    truth = target == 1
    counts = {"i": (pred & truth & valid).sum(), "u": ((pred | truth) & valid).sum()}
    for slot in range(2, probs.shape[2]):
        present = (selector[:, slot - 1] > 0.5)[:, None, None, None]
        pred_k = (probs[:, :, slot] > 0.5) & present
        truth_k = (target == slot) & present
        inter, union = (pred_k & truth_k & valid).sum(), ((pred_k | truth_k) & valid).sum()
        counts["sec_i"] = counts["sec_i"] + inter if "sec_i" in counts else inter
        counts["sec_u"] = counts["sec_u"] + union if "sec_u" in counts else union
    return {k: v.detach().float() for k, v in counts.items()}
