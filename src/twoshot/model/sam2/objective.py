"""SAM 2's training recipe (the reference's ``sam2.1_hiera_b+_MOSE_finetune.yaml``): the loss
of :mod:`twoshot.model.sam2.loss`, AdamW with the image encoder's layer-wise learning-rate
decay and weight decay off for biases and LayerNorms, a cosine learning-rate schedule, and
(through ``grad_clip``) gradient norm clipping.

Parameter groups, as the reference's ``construct_optimizer`` with its
``layer_decay_param_modifier`` builds them:

- learning rate: ``lr`` for everything outside the image encoder, ``lr x
  image_encoder_lr_ratio`` inside it (the reference's ``vision_lr`` 3e-6 against ``base_lr``
  5e-6); within the Hiera trunk (``image_encoder.trunk.*``) also ``layer_decay ** (L + 1 -
  layer)`` with L the number of trunk blocks + 1: layer 0 for the patch embedding,
  ``i + 1`` for block ``i``, L for the rest; position embeddings (``*pos_embed*``) keep 1;
- weight decay: ``weight_decay`` except names containing ``bias`` and the parameters of
  ``nn.LayerNorm`` modules (the channel LayerNorm2d's weights keep it, as in the reference);
- every group's rate follows ``lr_g x (r + (1 - r) (1 + cos(pi it / iterations)) / 2)``,
  r = ``end_lr_ratio`` (the reference's CosineParamScheduler from base to base / 10,
  evaluated at the fraction of training done before each step).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from twoshot.config import TrainConfig
from twoshot.data.batch import ClipBatch
from twoshot.model.sam2.spec import sam2_train_settings
from twoshot.train.forward import ClipOutput
from twoshot.train.loss import LossResult

TRUNK = "image_encoder.trunk"


def trunk_layer(name: str, blocks: int) -> int:
    """The layer-decay index of trunk parameter ``name`` (the reference's Hiera
    ``get_layer_id``; ``blocks`` trunk blocks)."""
    if "rel_pos" in name:
        return blocks + 1
    if "pos_embed" in name or "patch_embed" in name:
        return 0
    if "blocks" in name:
        return int(name.split("blocks")[1].split(".")[1]) + 1
    return blocks + 1


def lr_scale(name: str, blocks: int, decay: float, image_encoder_ratio: float) -> float:
    """The factor on ``lr`` of parameter ``name`` (see the module docstring)."""
    scale = image_encoder_ratio if name.startswith("image_encoder.") else 1.0
    if name.startswith(TRUNK) and not fnmatch.fnmatchcase(name, "*pos_embed*"):
        layers = blocks + 1
        scale *= decay ** (layers - trunk_layer(name, blocks))
    return scale


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters without weight decay: biases and ``nn.LayerNorm`` parameters."""
    names = {name for name, _ in model.named_parameters() if "bias" in name}
    for module_name, module in model.named_modules():
        if type(module) is nn.LayerNorm:
            names |= {
                f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)
            }
    return names


def sam2_parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups (one per learning rate and weight decay, in parameter order) over the
    trainable parameters of a :class:`~twoshot.model.sam2.Sam2`."""
    settings = sam2_train_settings(cfg)
    blocks = len({n.split(".")[3] for n, _ in model.named_parameters() if n.startswith(f"{TRUNK}.blocks.")})
    undecayed = no_decay_names(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = cfg.lr * lr_scale(name, blocks, settings.layer_decay, settings.image_encoder_lr_ratio)
        decay = 0.0 if name in undecayed else cfg.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def cosine_factor(it: int, iterations: int, end_ratio: float) -> float:
    """The cosine schedule's factor on each group's rate at 0-based iteration ``it``."""
    where = it / max(iterations, 1)
    return end_ratio + 0.5 * (1.0 - end_ratio) * (1.0 + math.cos(math.pi * where))


class Sam2Objective:
    """SAM 2's loss, AdamW groups and cosine schedule under one stage's settings."""

    grad_scale = 65536.0  # torch's default (the reference trains in bfloat16, unscaled)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.settings = sam2_train_settings(cfg)

    def configure(self, model: nn.Module) -> None:
        """Freeze the image encoder when ``<stage>.sam2.freeze_image_encoder``; gradient
        checkpointing from ``<stage>.sam2.gradient_checkpointing``."""
        from twoshot.model.sam2.network import Sam2

        if isinstance(model, Sam2):
            model.gradient_checkpointing = self.settings.gradient_checkpointing
        if self.settings.freeze_image_encoder:
            for name, param in model.named_parameters():
                if name.startswith("image_encoder."):
                    param.requires_grad_(False)

    def optimizer(self, model: nn.Module, use_amp: bool) -> torch.optim.Optimizer:
        """AdamW over :func:`sam2_parameter_groups` (betas 0.9 / 0.999, eps 1e-8)."""
        return torch.optim.AdamW(sam2_parameter_groups(model, self.cfg), lr=self.cfg.lr)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The cosine schedule over ``iterations`` (:func:`cosine_factor`)."""
        iterations, end = self.cfg.iterations, self.settings.end_lr_ratio
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_factor(it, iterations, end))

    def loss(self, output: ClipOutput, batch: ClipBatch, it: int) -> LossResult:
        """:func:`twoshot.model.sam2.loss.sam2_clip_loss` on the clip's aux predictions."""
        from twoshot.model.sam2.loss import sam2_clip_loss

        return sam2_clip_loss(output.aux, batch.cls_gt, batch.selector, self.settings)
