"""Cutie's building blocks: per-object convolutions, channel-attention residual blocks,
feature fusion, the GRU-like sensory updates and the decoder's upsampling step.

Object ("group") tensors carry an object axis after the batch: [B, K, C, H, W]; image-level
tensors are [B, C, H, W]. Attribute names follow the reference implementation
(hkchengrex/Cutie ``group_modules.py``, ``channel_attn.py``, ``modules.py``) so its state
dicts load unchanged, and the operations run in its order so that float results agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ObjectConv2d(nn.Conv2d):
    """A Conv2d applied to every object of a [B, K, C, H, W] tensor -> [B, K, C', H', W']."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, objects = x.shape[:2]
        out = super().forward(x.flatten(0, 1))
        return out.view(batch, objects, *out.shape[1:])


def resize_objects(x: torch.Tensor, ratio: float, mode: str) -> torch.Tensor:
    """Rescale the maps of every object by ``ratio``. x [B, K, C, H, W] -> [B, K, C, H*r, W*r].

    mode "bilinear" (align_corners False) for upsampling, "area" for downsampling.
    """
    batch, objects = x.shape[:2]
    align = False if mode == "bilinear" else None
    out = F.interpolate(x.flatten(0, 1), scale_factor=ratio, mode=mode, align_corners=align)
    return out.view(batch, objects, *out.shape[1:])


class ChannelAttentionResBlock(nn.Module):
    """Pre-activation residual block whose output is gated per channel (ECA-style).

    The gate: global average pool -> 1-D convolution across channels (kernel size from the
    channel count, as ECA-Net) -> sigmoid. x [N, C_in, H, W] -> [N, C_out, H, W].
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        t = int((abs(math.log2(out_dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        batch, channels = out.shape[:2]
        gate = F.adaptive_avg_pool2d(out, 1).view(batch, 1, channels)
        gate = self.conv(gate).transpose(-1, -2).unsqueeze(-1).sigmoid()  # [N, C, 1, 1]
        return out * gate + self.downsample(x)


class ObjectResBlock(nn.Module):
    """Pre-activation residual block on [B, K, C_in, H, W]; a 1x1 shortcut when widths differ."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = nn.Identity() if in_dim == out_dim else ObjectConv2d(in_dim, out_dim, kernel_size=1)
        self.conv1 = ObjectConv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = ObjectConv2d(out_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + self.downsample(x)


class _Projections(nn.Module):
    """The two 1x1 projections of a fusion: image features and per-object features to one width."""

    def __init__(self, image_dim: int, object_dim: int, out_dim: int) -> None:
        super().__init__()
        self.x_transform = nn.Conv2d(image_dim, out_dim, kernel_size=1)
        self.g_transform = ObjectConv2d(object_dim, out_dim, kernel_size=1)

    def forward(self, image: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        shared = self.x_transform(image).unsqueeze(1)
        return shared + self.g_transform(objects)


class ObjectFeatureFusion(nn.Module):
    """Adds projected image features to every object's features, then two gated residual blocks.

    image [B, C_img, H, W], objects [B, K, C_obj, H, W] -> [B, K, out_dim, H, W].
    """

    def __init__(self, image_dim: int, object_dim: int, out_dim: int) -> None:
        super().__init__()
        self.distributor = _Projections(image_dim, object_dim, out_dim)
        self.block1 = ChannelAttentionResBlock(out_dim, out_dim)
        self.block2 = ChannelAttentionResBlock(out_dim, out_dim)

    def forward(self, image: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        batch, count = objects.shape[:2]
        x = self.distributor(image, objects).flatten(0, 1)
        x = self.block2(self.block1(x))
        return x.view(batch, count, *x.shape[1:])


def gated_update(state: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """GRU-like step of the sensory memory.

    state [B, K, C, H, W]; gates [B, K, 3C, H, W] = (forget, update, candidate) logits.
    Returns forget * state * (1 - update) + update * tanh(candidate), all gates sigmoid.
    """
    dim = gates.shape[2] // 3
    forget = torch.sigmoid(gates[:, :, :dim])
    update = torch.sigmoid(gates[:, :, dim : dim * 2])
    candidate = torch.tanh(gates[:, :, dim * 2 :])
    return forget * state * (1 - update) + update * candidate


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context that turns autocast off on ``x``'s device (the recurrent state stays fp32)."""
    return torch.autocast(x.device.type, enabled=False)


class SensoryUpdater(nn.Module):
    """The decoder's sensory update from its 1/16, 1/8 and 1/4 features (1/8, 1/4 area-pooled).

    in_dims: channels at (1/16, 1/8, 1/4); the 1/4 input carries the logit as an extra channel.
    """

    def __init__(self, in_dims: list[int], mid_dim: int, sensory_dim: int) -> None:
        super().__init__()
        self.g16_conv = ObjectConv2d(in_dims[0], mid_dim, kernel_size=1)
        self.g8_conv = ObjectConv2d(in_dims[1], mid_dim, kernel_size=1)
        self.g4_conv = ObjectConv2d(in_dims[2], mid_dim, kernel_size=1)
        self.transform = ObjectConv2d(mid_dim + sensory_dim, sensory_dim * 3, kernel_size=3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(self, features: list[torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        """features [p16, p8, p4] object tensors; state [B, K, C_s, h, w] -> new state (float32)."""
        p16, p8, p4 = features
        x = (
            self.g16_conv(p16)
            + self.g8_conv(resize_objects(p8, 1 / 2, "area"))
            + self.g4_conv(resize_objects(p4, 1 / 4, "area"))
        )
        with _no_autocast(x):
            x, state = x.float(), state.float()
            return gated_update(state, self.transform(torch.cat([x, state], dim=2)))


class SensoryDeepUpdater(nn.Module):
    """The mask encoder's ("deep") sensory update from the new memory values."""

    def __init__(self, value_dim: int, sensory_dim: int) -> None:
        super().__init__()
        self.transform = ObjectConv2d(value_dim + sensory_dim, sensory_dim * 3, kernel_size=3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(self, values: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """values [B, K, C_v, h, w]; state [B, K, C_s, h, w] -> new state (float32)."""
        with _no_autocast(values):
            values, state = values.float(), state.float()
            return gated_update(state, self.transform(torch.cat([values, state], dim=2)))


class MaskUpsampleBlock(nn.Module):
    """x2 bilinear upsampling of object features, plus a skip feature map, then a residual block.

    objects [B, K, C_in, h, w], skip [B, C_in, 2h, 2w] -> [B, K, C_out, 2h, 2w].
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_conv = ObjectResBlock(in_dim, out_dim)

    def forward(self, objects: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = resize_objects(objects, 2, "bilinear")
        return self.out_conv(skip.unsqueeze(1) + x)


class DecoderFeatureProcessor(nn.Module):
    """1x1 projections of the pixel encoder's 1/8 and 1/4 features to the decoder's widths."""

    def __init__(self, in_dims: list[int], out_dims: list[int]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(i, o, kernel_size=1) for i, o in zip(in_dims, out_dims))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """[f8, f4] -> their projections, in that order."""
        return [proj(f) for f, proj in zip(features, self.transforms)]
