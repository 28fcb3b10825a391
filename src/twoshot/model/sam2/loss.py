"""SAM 2's training loss: the reference's ``MultiStepMultiMasksAndIous``
(``training/loss_fns.py`` of facebookresearch/sam2) with its training config's settings, on
the predictions of :func:`twoshot.model.sam2.train_forward.training_forward`.

Per object (each selected slot of each clip, N of them in the batch) and frame 0..T-1 (the
given frame 0 included, as the reference: its terms are constants):

- focal loss (alpha 0.25, gamma 2) per output mask, the mean over pixels; dice per mask
  (``1 - (2 sum(p g) + 1) / (sum p + sum g + 1)``, p the sigmoid); both divided by N;
- of the three masks, the one with the smallest ``mask_weight x focal + dice_weight x dice``
  gives the focal and dice terms; the IoU term is the L1 distance between each mask's
  predicted IoU and its actual IoU (logits > 0 against the target), averaged over the masks
  (``supervise_all_iou``), / N;
- focal, dice and IoU count only where the object is in the target; the object-score term is
  the binary cross-entropy of the score logit against "the object is in the target"
  (focal with gamma 0 and no alpha), / N;
- total: ``mask_weight`` focal + ``dice_weight`` dice + ``iou_weight`` IoU + ``class_weight``
  object score, summed over objects and frames.

Ignored pixels (-1, the phase-1 teacher's unconfident ones; the reference has none) are left
out of every term: the focal mean runs over labeled pixels, dice and IoU see only labeled
pixels. An object counts as present if a labeled pixel is it, as absent if every pixel is
labeled and none is it; otherwise (absent from the labeled pixels, some ignored) its frame
adds nothing, nor does a frame without any labeled pixel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from twoshot.train.loss import LossResult

if TYPE_CHECKING:
    from twoshot.model.sam2.spec import Sam2TrainSettings

TERMS = ("mask", "dice", "iou", "class")


def focal_per_mask(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Sigmoid focal loss averaged over labeled pixels: logits [..., M, P], target / valid
    [..., 1, P] (0 / 1) -> [..., M]."""
    target = target.expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    count = valid.sum(-1).clamp_min(1.0)
    return (loss * valid).sum(-1) / count


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dice loss of each mask on labeled pixels: logits [..., M, P], target / valid [..., 1, P]
    -> [..., M]."""
    prob = logits.sigmoid() * valid
    target = (target * valid).expand_as(prob)
    numerator = 2 * (prob * target).sum(-1)
    denominator = prob.sum(-1) + target.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def iou_error(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, predicted: torch.Tensor
) -> torch.Tensor:
    """L1 distance between predicted IoUs [..., M] and the masks' actual IoU on labeled pixels
    (logits [..., M, P] > 0 against target [..., 1, P] > 0) -> [..., M]."""
    labeled = valid > 0
    pred = (logits > 0) & labeled
    gt = ((target > 0) & labeled).expand_as(pred)
    inter = (pred & gt).sum(-1).to(predicted.dtype)
    union = (pred | gt).sum(-1).to(predicted.dtype)
    return (predicted - inter / union.clamp_min(1.0)).abs()


def sam2_clip_loss(
    aux: dict[str, torch.Tensor], cls_gt: torch.Tensor, selector: torch.Tensor, settings: Sam2TrainSettings
) -> LossResult:
    """The loss of a batch (see the module docstring).

    aux: ``masks`` [B, T, K, 3, S, S], ``ious`` [B, T, K, 3], ``scores`` [B, T, K, 1]
    (:func:`~twoshot.model.sam2.train_forward.training_forward`); cls_gt int64 [B, T, H, W]
    (0 background, k+1 slot k, -1 ignored; resized to S x S nearest when H, W differ);
    selector [B, K]. Returns the total, the batch loss of each frame 1..T-1 and the four
    weighted-sum terms (``mask`` focal, ``dice``, ``iou``, ``class``), each unweighted.
    """
    masks, ious, scores = aux["masks"], aux["ious"], aux["scores"]
    b, t, k = masks.shape[:3]
    size = masks.shape[-2:]
    gt = cls_gt
    if gt.shape[-2:] != size:
        gt = F.interpolate(gt.float(), size=size, mode="nearest").long()
    chosen = selector > 0.5
    src = masks.transpose(1, 2)[chosen].flatten(-2)  # [N, T, 3, P]
    predicted = ious.transpose(1, 2)[chosen]  # [N, T, 3]
    score = scores.transpose(1, 2)[chosen]  # [N, T, 1]
    slot_ids = torch.arange(1, k + 1, device=gt.device).view(1, k, 1, 1, 1)
    target_all = gt.unsqueeze(1) == slot_ids  # [B, K, T, H, W]
    target = target_all[chosen].flatten(-2).unsqueeze(2).to(src.dtype)  # [N, T, 1, P]
    labeled = (gt >= 0).unsqueeze(1).expand(b, k, t, *gt.shape[-2:])
    valid = labeled[chosen].flatten(-2).unsqueeze(2).to(src.dtype)
    num_objects = max(int(chosen.sum()), 1)

    focal = focal_per_mask(src, target, valid, settings.focal_alpha, settings.focal_gamma) / num_objects
    dice = dice_per_mask(src, target, valid) / num_objects
    iou = iou_error(src, target, valid, predicted) / num_objects
    present = ((target * valid) > 0).any(-1).to(src.dtype)  # [N, T, 1]
    complete = (valid > 0).all(-1)
    known = ((present > 0) | complete).to(src.dtype)
    object_score = F.binary_cross_entropy_with_logits(score, present, reduction="none") / num_objects

    best = torch.argmin(focal * settings.mask_weight + dice * settings.dice_weight, dim=-1, keepdim=True)
    weight = (present * known)[..., 0]
    per_frame = {
        "mask": focal.gather(-1, best)[..., 0] * weight,
        "dice": dice.gather(-1, best)[..., 0] * weight,
        "iou": iou.mean(-1) * weight,
        "class": object_score[..., 0] * known[..., 0],
    }  # each [N, T]
    weights = {
        "mask": settings.mask_weight,
        "dice": settings.dice_weight,
        "iou": settings.iou_weight,
        "class": settings.class_weight,
    }
    frame_totals = sum(per_frame[name].sum(0) * weights[name] for name in TERMS)
    assert isinstance(frame_totals, torch.Tensor)
    total = frame_totals.sum()
    return LossResult(
        total=total,
        frames=[frame_totals[i].detach() for i in range(1, t)],
        terms={name: per_frame[name].sum().detach() for name in TERMS},
    )
