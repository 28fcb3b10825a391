"""Inference-only rewrites that compute the same function as a network with less work.

Not bit-identical to the reference implementations (sums run in another order), so they are
used only when ``inference.exact`` is off; the masks they give agree with the exact path on
all but a few pixels in a million (``tests/test_fast_inference.py``, docs/performance.md).

- :func:`fold_batch_norms`: a copy of a module whose eval-mode BatchNorms are folded into the
  convolutions before them (``torch.nn.utils.fusion.fuse_conv_bn_eval``), one pass less
  over every activation of the ResNet encoders.
- :class:`SharedInputResBlock`: STCN's decoder starts with a ResBlock on
  ``concat(readout, key_comp)``, and its value fuser with one on ``concat(value f16, key
  f16)``: the first half differs per object, the key half is the same for every object of a
  frame. A convolution is linear in its input channels, so its output is
  ``conv_object(object half) + conv_key(key half)``, and the second term is computed once
  per frame instead of once per object.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from twoshot.model.stcn.modules import ResBlock, per_object_rows

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fold_batch_norms(module: ModuleT) -> ModuleT:
    """An eval-mode copy of ``module`` with every BatchNorm folded into its convolution.

    Pairs are found by torchvision's ResNet naming, which every encoder here uses: a module's
    ``convN`` followed by ``bnN`` (N = 1, 2, 3), and ``Sequential(Conv2d, BatchNorm2d)``
    downsample branches. The BatchNorm becomes an ``Identity``; ``module`` is left unchanged.
    """
    folded = copy.deepcopy(module).eval()
    for parent in folded.modules():
        for n in (1, 2, 3):
            conv, norm = getattr(parent, f"conv{n}", None), getattr(parent, f"bn{n}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(parent, f"conv{n}", fuse_conv_bn_eval(conv, norm))
                setattr(parent, f"bn{n}", nn.Identity())
        if isinstance(parent, nn.Sequential) and len(parent) == 2:
            conv, norm = parent[0], parent[1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                parent[0], parent[1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return folded


def with_modules(module: ModuleT, **replacements: nn.Module) -> ModuleT:
    """A shallow copy of ``module`` that shares its submodules except those named, which it
    replaces; ``module`` itself is unchanged."""
    clone = copy.copy(module)
    # copy.copy shares the submodule registry: give the copy its own before replacing.
    object.__setattr__(clone, "_modules", dict(module._modules))
    for name, replacement in replacements.items():
        setattr(clone, name, replacement)
    return clone


def _split_conv(conv: nn.Conv2d, channels: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """(conv on the first ``channels`` input channels with the bias, conv on the rest without)."""
    weight = conv.weight.detach()
    first, rest = copy.deepcopy(conv), copy.deepcopy(conv)
    first.weight = nn.Parameter(weight[:, :channels].clone(), requires_grad=False)
    rest.weight = nn.Parameter(weight[:, channels:].clone(), requires_grad=False)
    first.in_channels, rest.in_channels = channels, conv.in_channels - channels
    rest.register_parameter("bias", None)
    return first, rest


class SharedInputResBlock(nn.Module):
    """A :class:`ResBlock` on ``concat(per_object, shared)`` with the shared half computed once.

    Built from a ResBlock with a ``downsample`` convolution (its input and output widths
    differ) whose first ``per_object_channels`` input channels are the per-object part.
    """

    def __init__(self, block: ResBlock, per_object_channels: int) -> None:
        super().__init__()
        if block.downsample is None:
            raise ValueError("SharedInputResBlock needs a ResBlock whose width changes (with downsample)")
        self.conv1_object, self.conv1_shared = _split_conv(block.conv1, per_object_channels)
        self.down_object, self.down_shared = _split_conv(block.downsample, per_object_channels)
        self.conv2 = copy.deepcopy(block.conv2)

    def forward(self, per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """per_object [B*K, Ca, h, w] (K objects per frame, batch-major), shared [B, Cb, h, w]
        -> [B*K, Cout, h, w], equal (up to float rounding) to the block on their concatenation."""
        rows = per_object.shape[0]
        hidden = self.conv1_object(F.relu(per_object)) + per_object_rows(
            self.conv1_shared(F.relu(shared)), rows
        )
        skip = self.down_object(per_object) + per_object_rows(self.down_shared(shared), rows)
        return skip + self.conv2(F.relu(hidden))
