"""Image normalisation and the divisible-by-16 padding STCN applies before encoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Padding = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order for the last two dims


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise RGB images.

    images: [..., 3, H, W], uint8 in 0..255 or float in 0..1. Returns float32 of the same shape.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def pad_divide_by(x: torch.Tensor, divisor: int = 16) -> tuple[torch.Tensor, Padding]:
    """Zero-pad the last two dims up to a multiple of ``divisor``, splitting the extra evenly.

    The odd pixel goes to the bottom / right, as in STCN. x: [..., H, W].
    Returns (padded [..., H', W'], padding (left, right, top, bottom)).
    """
    h, w = x.shape[-2:]
    extra_h = (divisor - h % divisor) % divisor
    extra_w = (divisor - w % divisor) % divisor
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    if extra_h == 0 and extra_w == 0:
        return x, pad
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: Padding) -> torch.Tensor:
    """Undo :func:`pad_divide_by`: crop [..., H', W'] back to [..., H, W]."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]
