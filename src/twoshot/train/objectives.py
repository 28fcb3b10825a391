"""What each model kind trains with: its loss, optimiser and AMP loss scale, in one place.

The trainer asks :func:`objective_for` once and never looks at ``model.kind`` itself. STCN
trains with the bootstrapped CE and Adam over all parameters (DESIGN §2-3); Cutie with
cross-entropy + dice on sampled points plus auxiliary terms and AdamW with the reference's
parameter groups (DESIGN §7). A model names its recipe class in its spec's ``objective``
(:mod:`twoshot.model.spec`); the class may live in the model's own folder.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from twoshot.config import TrainConfig
from twoshot.data.batch import ClipBatch
from twoshot.model.cutie.spec import cutie_train_settings
from twoshot.train.forward import ClipOutput
from twoshot.train.loss import LossResult, clip_loss


class Objective(Protocol):
    """A model kind's training recipe (loss, optimiser, scaler), bound to one stage's config.

    It may also have ``scheduler(optimizer) -> LRScheduler`` (stepped after every optimiser
    step; SAM 2's cosine schedule); without it the trainer uses MultiStepLR on ``lr_steps``."""

    grad_scale: float  # the GradScaler's initial scale under AMP

    def configure(self, model: nn.Module) -> None:
        """Hand the stage's model-side training settings to ``model`` (before the first step)."""

    def optimizer(self, model: nn.Module, use_amp: bool) -> torch.optim.Optimizer:
        """The optimiser over ``model``'s trainable parameters."""

    def loss(self, output: ClipOutput, batch: ClipBatch, it: int) -> LossResult:
        """The loss of a batch: targets ``batch.cls_gt`` int64 [B, T, H, W] (-1 ignored) of the
        slots ``batch.selector`` [B, K]; ``output`` the clip predictions (with aux); ``it``
        0-based."""


class STCNObjective:
    """STCN: bootstrapped CE (:func:`twoshot.train.loss.clip_loss`), Adam on every parameter."""

    grad_scale = 65536.0  # torch's default, as STCN's trainer

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def configure(self, model: nn.Module) -> None:
        """Nothing to set: STCN's clip forward has no training settings."""

    def optimizer(self, model: nn.Module, use_amp: bool) -> torch.optim.Optimizer:
        """Adam(lr, weight_decay) over the parameters that require gradients."""
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def loss(self, output: ClipOutput, batch: ClipBatch, it: int) -> LossResult:
        """Bootstrapped CE over frames 1..T-1 (ignored pixels left out)."""
        return clip_loss(output.logits, batch.cls_gt, batch.selector, it, self.cfg)


# Parameter-name endings of the object transformer's learned embeddings: no weight decay (the
# reference matches with ``endswith`` on these names).
EMBEDDING_SUFFIXES = ("summary_pos.weight", "query_init.weight", "query_emb.weight", "obj_pe.weight")


def cutie_parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The reference's three AdamW groups, in its order: the pixel encoder (lr x
    ``backbone_lr_ratio``), the embeddings (``embed_weight_decay``), everything else."""
    backbone: list[nn.Parameter] = []
    embeddings: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if name.startswith("pixel_encoder."):
            backbone.append(param)
        elif name.endswith(EMBEDDING_SUFFIXES):
            embeddings.append(param)
        else:
            others.append(param)
    settings = cutie_train_settings(cfg)
    return [
        {"params": backbone, "lr": cfg.lr * settings.backbone_lr_ratio, "weight_decay": cfg.weight_decay},
        {"params": embeddings, "lr": cfg.lr, "weight_decay": settings.embed_weight_decay},
        {"params": others, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
    ]


class CutieObjective:
    """Cutie: CE + dice on sampled points with aux terms; AdamW in the reference's groups."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.settings = cutie_train_settings(cfg)
        self.grad_scale = float(self.settings.grad_scale)

    def configure(self, model: nn.Module) -> None:
        """Reference frames and deep-update chance of Cutie's clip forward from ``cfg.cutie``."""
        from twoshot.model.cutie import Cutie

        if isinstance(model, Cutie):
            model.num_ref_frames = self.settings.num_ref_frames
            model.deep_update_prob = self.settings.deep_update_prob

    def optimizer(self, model: nn.Module, use_amp: bool) -> torch.optim.Optimizer:
        """AdamW over :func:`cutie_parameter_groups`; eps 1e-6 under AMP (1e-8 otherwise)."""
        return torch.optim.AdamW(
            cutie_parameter_groups(model, self.cfg),
            lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay,
            eps=1e-6 if use_amp else 1e-8,
        )

    def loss(self, output: ClipOutput, batch: ClipBatch, it: int) -> LossResult:
        """:func:`twoshot.train.point_loss.cutie_clip_loss` (ignored pixels excluded)."""
        from twoshot.train.point_loss import cutie_clip_loss

        return cutie_clip_loss(
            output.logits, output.aux, batch.cls_gt, batch.selector, self.settings, batch.sample_seed
        )


def scheduler_for(
    objective: Objective, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The objective's own learning-rate schedule (its ``scheduler(optimizer)``, e.g. SAM 2's
    cosine one) if it has one, else MultiStepLR on ``cfg.lr_steps`` / ``cfg.lr_gamma``."""
    own = getattr(objective, "scheduler", None)
    if own is not None:
        schedule: torch.optim.lr_scheduler.LRScheduler = own(optimizer)
        return schedule
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_steps, cfg.lr_gamma)


def objective_for(kind: str, cfg: TrainConfig) -> Objective:
    """The training recipe of model kind ``kind`` (its spec's ``objective``) under stage
    settings ``cfg``; UserError listing the models if ``kind`` is not registered."""
    from twoshot.model.registry import spec_for
    from twoshot.model.spec import import_object

    objective: Objective = import_object(spec_for(kind).objective)(cfg)
    return objective
