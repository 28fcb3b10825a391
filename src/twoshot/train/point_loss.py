"""Cutie's training loss: cross-entropy + dice on uncertainty-sampled points, with ignored pixels.

As the reference (hkchengrex/Cutie ``model/losses.py`` with PointRend's point sampling): per
sample, the frames 1..T-1 are scored on ``num_points`` points each, drawn in [0, 1]^2 as
``oversample_ratio x num_points`` uniform candidates of which the ``importance_ratio`` share
with the smallest gap between the two largest logits is kept, the rest uniform. Logits and the
one-hot targets are read at the points bilinearly (``grid_sample``, ``align_corners=False``,
zero padding). CE uses the soft targets; dice ``1 - (2 sum(p g) + 1) / (sum p + sum g + 1)``
is over the objects (not the background) per frame. Each term is summed over frames, averaged
over objects / points and over the batch. The same loss applies to the auxiliary logits
(sensory and per-level query logits, at 1/16) with their own points, weighted 0.01.

Two-shot adds the label -1 (ignored pixel). Its one-hot target is all zeros, so a point read
from ignored pixels carries no class mass; CE at a point is thus already weighted by the share
of labeled pixels around it and is normalised by the summed shares of the frame's points
(equal to the reference's mean when nothing is ignored); the predicted masses in dice are
weighted by the same share. Candidates that fall wholly on ignored pixels are never picked as
uncertain. A frame without labeled pixels contributes 0 (still attached to the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from twoshot.model.cutie.spec import CutieTrainSettings
from twoshot.train.loss import IGNORE, LossResult, object_channels


@dataclass(frozen=True)
class PointSampling:
    """How many points a frame is scored on and how they are chosen (see module docstring)."""

    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75


def point_sample(values: torch.Tensor, coords: torch.Tensor, border: bool = False) -> torch.Tensor:
    """Bilinear reads of ``values`` [N, C, H, W] at ``coords`` [N, P, 2] (x, y in [0, 1]).

    Returns [N, C, P]. ``border``: pad with the edge values instead of zeros (used for the
    labeled-pixel map, so that a point near the border of a fully labeled frame reads 1).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(values.dtype)
    mode = "border" if border else "zeros"
    return F.grid_sample(values, grid, mode="bilinear", padding_mode=mode, align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of point logits [N, C, P] -> [N, P]: the second-largest minus the largest
    logit (the foreground logit's negated magnitude for two classes); larger = less certain."""
    if logits.shape[1] == 2:
        return -logits[:, 1].abs()
    top2 = torch.topk(logits, k=2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def sample_points(
    logits: torch.Tensor,
    sampling: PointSampling,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Point coordinates [N, P, 2] in [0, 1]^2 for logits [N, C, H, W] (PointRend's rule).

    valid: the labeled-pixel map [N, 1, H', W'] (1 labeled, 0 ignored) or None (all
    labeled); candidates reading 0 from it are ranked last. Draws from ``generator`` (on
    the logits' device), or torch's default one.
    """
    count = logits.shape[0]
    candidates = int(sampling.num_points * sampling.oversample_ratio)
    coords = torch.rand(count, candidates, 2, device=logits.device, generator=generator)
    with torch.autocast(logits.device.type, enabled=False):
        score = uncertainty(point_sample(logits.float(), coords))
        if valid is not None:
            score = score.masked_fill(point_sample(valid, coords, border=True)[:, 0] <= 0, float("-inf"))
    important = int(sampling.importance_ratio * sampling.num_points)
    picked = torch.topk(score, k=important, dim=1).indices
    chosen = torch.gather(coords, 1, picked.unsqueeze(2).expand(-1, -1, 2))
    rest = sampling.num_points - important
    if rest > 0:
        extra = torch.rand(count, rest, 2, device=logits.device, generator=generator)
        chosen = torch.cat([chosen, extra], dim=1)
    return chosen


def one_hot_targets(cls_gt: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One-hot targets of class maps, ignored pixels all zero.

    cls_gt int64 [N, H, W] with 0..channels-1 and IGNORE. Returns (float [N, channels, H, W],
    the labeled-pixel map float [N, 1, H, W], or None when no pixel is ignored).
    """
    ignored = cls_gt == IGNORE
    hot = F.one_hot(cls_gt.clamp(min=0), channels).permute(0, 3, 1, 2).float()
    if not bool(ignored.any()):
        return hot, None
    valid = (~ignored).float().unsqueeze(1)
    return hot * valid, valid


def point_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None,
    sampling: PointSampling,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, dice) of one sample's frames, each summed over frames.

    logits [N, C, h, w] (any resolution; N frames); targets [N, C, H, W] one-hot (zeros
    where ignored); valid [N, 1, H, W] labeled-pixel map or None; generator: where the
    points are drawn from (None: torch's default). Returns two scalars.
    """
    with torch.no_grad():
        coords = sample_points(logits.detach(), sampling, valid, generator)
        labels = point_sample(targets, coords)  # [N, C, P]
        weight = point_sample(valid, coords, border=True) if valid is not None else None  # [N, 1, P]
    with torch.autocast(logits.device.type, enabled=False):
        return point_terms(point_sample(logits.float(), coords), labels, weight)


def point_terms(
    point_logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, dice) from logits and soft targets read at points, each summed over frames.

    point_logits, labels [N, C, P] (labels carry no mass where ignored); weight [N, 1, P]
    the labeled share at each point, or None (all labeled). CE per frame: mean over points
    (with weights: sum / summed weights); dice per frame and object (channels 1..C-1):
    ``1 - (2 sum(p g) + 1) / (sum p + sum g + 1)`` with p the softmax (times the weight), then
    summed over frames and averaged over objects.
    """
    # Soft-target CE = -(labels * log_softmax).sum over classes; zero at ignored points.
    ce = -(labels * F.log_softmax(point_logits, dim=1)).sum(dim=1)  # [N, P]
    probs = F.softmax(point_logits, dim=1)[:, 1:]
    truth = labels[:, 1:]
    if weight is None:
        ce_frames = ce.mean(dim=1)
    else:
        ce_frames = ce.sum(dim=1) / weight[:, 0].sum(dim=1).clamp(min=1e-6)
        probs = probs * weight
    numerator = 2 * (probs * truth).sum(-1)
    denominator = probs.sum(-1) + truth.sum(-1)
    dice = 1 - (numerator + 1) / (denominator + 1)  # [N, K]
    return ce_frames.sum(), dice.sum(0).mean()


def cutie_clip_loss(
    logits: torch.Tensor,
    aux: dict[str, torch.Tensor],
    cls_gt: torch.Tensor,
    selector: torch.Tensor,
    settings: CutieTrainSettings,
    seeds: torch.Tensor | None = None,
) -> LossResult:
    """Cutie's loss over frames 1..T-1 of a batch of clips.

    logits [B, T-1, K+1, H, W]; aux: ``sensory`` [B, T-1, K+1, h, w] and ``query``
    [B, T-1, K+1, L, h, w] when present (:meth:`Cutie.training_forward`); cls_gt int64
    [B, T, H, W] (0 background, k the object of slot k, -1 ignored; frame 0 not scored);
    selector [B, K] (a sample is scored on background + its
    :func:`~twoshot.train.loss.object_channels` objects); seeds int64 [B]: each
    sample's points come from a generator seeded with its entry (the batch's
    ``sample_seed``), so that a sample is scored alike in any process and batch position;
    None draws from torch's default generator. Returns a
    :class:`LossResult` whose ``terms`` hold ce, dice and the weighted aux terms.
    """
    sampling = PointSampling(settings.num_points, settings.oversample_ratio, settings.importance_ratio)
    batch = logits.shape[0]
    objects = object_channels(selector)  # the reference's num_objects per sample
    seed_list = seeds.tolist() if seeds is not None else None
    terms: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        terms[name] = terms[name] + value if name in terms else value

    for b in range(batch):
        channels = objects[b] + 1
        targets, valid = one_hot_targets(cls_gt[b, 1:].clamp(max=channels - 1), channels)
        generator = None
        if seed_list is not None:
            generator = torch.Generator(device=logits.device).manual_seed(int(seed_list[b]))
        ce, dice = point_losses(logits[b, :, :channels], targets, valid, sampling, generator)
        add("ce", ce / batch)
        add("dice", dice / batch)
        if "sensory" in aux:
            ce, dice = point_losses(aux["sensory"][b, :, :channels], targets, valid, sampling, generator)
            add("sensory_ce", ce * settings.sensory_aux_weight / batch)
            add("sensory_dice", dice * settings.sensory_aux_weight / batch)
        if "query" in aux:
            for level in range(aux["query"].shape[3]):
                level_logits = aux["query"][b, :, :channels, level]
                ce, dice = point_losses(level_logits, targets, valid, sampling, generator)
                add(f"query_ce_l{level}", ce * settings.query_aux_weight / batch)
                add(f"query_dice_l{level}", dice * settings.query_aux_weight / batch)
    total = torch.stack(list(terms.values())).sum()
    return LossResult(total, [], 1.0, {k: v.detach() for k, v in terms.items()})
