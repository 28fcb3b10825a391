"""Per-pixel targets of the two-shot method: confident pseudo labels and online refinement.

Both turn aggregated probabilities (background first: [B, K+1, H, W] for background and the
clip's K objects; STCN K = 2, target and second object) into class targets 0..K, with -1 for
"no label" (ignored by the loss).
"""

from __future__ import annotations

import torch

IGNORE = -1


def confident_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class of each pixel whose most likely class has probability >= ``threshold``, else -1.

    prob: [B, C, H, W] aggregated probabilities (C = 1 + K objects, background first); since
    they sum to one, the background test ``1 - (p1 + ... + pK) >= t`` is ``prob[:, 0] >= t``.
    With ``t > 0.5`` at most one class passes. Returns int64 [B, H, W].
    """
    best, label = prob.max(dim=1)
    return torch.where(best >= threshold, label, torch.full_like(label, IGNORE))


def pseudo_label_targets(
    cls_gt: torch.Tensor, labeled: torch.Tensor, teacher_prob: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Phase-1 targets: ground truth on labeled frames, confident teacher labels elsewhere.

    cls_gt: int64 [B, T, H, W] (-1 on unlabeled frames); labeled: bool [B, T];
    teacher_prob: [B, T-1, C, H, W], the teacher's aggregated probabilities for frames 1..T-1.
    Returns int64 [B, T, H, W]; frame 0 is always the given ground truth.
    """
    targets = cls_gt.clone()
    teacher_labels = confident_labels(teacher_prob.flatten(0, 1), threshold).view_as(cls_gt[:, 1:])
    unlabeled = ~labeled[:, 1:]
    targets[:, 1:][unlabeled] = teacher_labels[unlabeled]
    return targets


def refine_targets(cls_gt: torch.Tensor, prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """Phase-2 online refinement: where the model is confident (>= ``threshold``) its class
    overwrites the target.

    cls_gt: int64 [B, T, H, W] targets from the pseudo-label bank; prob: [B, T-1, C, H, W]
    the model's aggregated probabilities for frames 1..T-1 (detached). Frame 0 is unchanged.
    Returns int64 [B, T, H, W].
    """
    targets = cls_gt.clone()
    confident = confident_labels(prob.flatten(0, 1), threshold).view_as(cls_gt[:, 1:])
    keep = confident == IGNORE
    targets[:, 1:] = torch.where(keep, cls_gt[:, 1:], confident)
    return targets


def label_share(targets: torch.Tensor, labeled: torch.Tensor) -> float:
    """Share of pixels of unlabeled frames that received a pseudo label (not -1).

    targets int64 [B, T, H, W]; labeled bool [B, T]. Returns a float in [0, 1] (nan if none).
    """
    unlabeled = targets[~labeled]
    return float((unlabeled != IGNORE).float().mean()) if unlabeled.numel() else float("nan")
