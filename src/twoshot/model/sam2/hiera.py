"""SAM 2's image encoder: a Hiera trunk (Ryali et al., 2023, as simplified in SAM 2) and an FPN
neck, with the reference's parameter names (``image_encoder.trunk.*``, ``image_encoder.neck.*``).

The trunk embeds 7x7/4 patches, adds a windowed positional embedding (a background grid
interpolated to the input plus a tiled per-window one), and runs four stages of blocks at
strides 4, 8, 16 and 32; the first block of stages 2-4 halves the resolution by max-pooling
its queries and doubles the channels and heads. Blocks attend within windows, except the
global-attention ones. The neck projects every stage to 256 channels and adds the
upsampled stride-32 map to the stride-16 one; the stride-32 level is then dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.model.sam2.layers import MLP, SinePositions
from twoshot.model.sam2.sizes import HIDDEN_DIM, Sam2Size


def to_windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> ([B * windows, size, size, C], padded (H, W)), zero-padding H and W
    up to multiples of ``size``."""
    b, h, w, c = x.shape
    pad_h, pad_w = (size - h % size) % size, (size - w % size) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, c), (hp, wp)


def from_windows(
    windows: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`to_windows`: -> [B, H, W, C] without the padding."""
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // size // size)
    x = windows.reshape(b, hp // size, wp // size, size, size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > hw[0] or wp > hw[1]:
        x = x[:, : hw[0], : hw[1], :]
    return x


def pool_nhwc(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Apply a [B, C, H, W] pooling to [B, H, W, C] tokens."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution (``proj``): [B, 3, H, W] -> [B, H/4, W/4, C]."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over [B, H, W, C] tokens whose queries may be pooled."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1), 2)
        if self.q_pool is not None:
            q = pool_nhwc(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """A Hiera block: (windowed) attention and an MLP, pre-norm; a stage's first block pools
    (stride ``q_stride``) and widens to ``dim_out`` (its shortcut through ``proj``)."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, q_stride: int | None, window_size: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(q_stride, q_stride, ceil_mode=False) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, 4 * dim_out, dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = pool_nhwc(shortcut, self.pool)
        size = self.window_size
        hw = (x.shape[1], x.shape[2])
        padded = hw
        if size > 0:
            x, padded = to_windows(x, size)
        x = self.attn(x)
        if self.q_stride and self.window_size > 0:
            # the queries were pooled: the windows (and the map) shrank by the stride
            size = self.window_size // self.q_stride
            hw = (shortcut.shape[1], shortcut.shape[2])
            padded = (hw[0] + (size - hw[0] % size) % size, hw[1] + (size - hw[1] % size) % size)
        if self.window_size > 0:
            x = from_windows(x, size, padded, hw)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """The trunk: [B, 3, S, S] -> its four stages' maps, [B, C_i, S/4/2^i, S/4/2^i], finest first."""

    def __init__(self, size: Sam2Size) -> None:
        super().__init__()
        dim, heads = size.embed_dim, size.num_heads
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *size.pos_embed_size))
        first_window = size.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, dim, first_window, first_window))
        self.stage_ends = [sum(size.stages[: i + 1]) - 1 for i in range(len(size.stages))]
        pooling_blocks = {end + 1 for end in self.stage_ends[:-1]}
        self.blocks = nn.ModuleList()
        stage = 0
        for i in range(size.depth):
            dim_out = dim
            # a stage's first block still uses the previous stage's window size
            window = 0 if i in size.global_att_blocks else size.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(
                MultiScaleBlock(dim, dim_out, heads, 2 if i in pooling_blocks else None, window)
            )
            dim = dim_out

    def positions(self, hw: tuple[int, int]) -> torch.Tensor:
        """The positional embedding for an (h, w) patch grid -> [1, h, w, C]."""
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile([a // b for a, b in zip(pos.shape, window.shape)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self.positions((x.shape[1], x.shape[2]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class FpnNeck(nn.Module):
    """1x1 projections of the trunk's stages to 256 channels (``convs.i.conv``, deepest first);
    the two coarsest levels get the nearest-upsampled coarser level added (top-down)."""

    def __init__(self, channel_list: list[int], d_model: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for channels in channel_list:
            level = nn.Sequential()
            level.add_module("conv", nn.Conv2d(channels, d_model, kernel_size=1))
            self.convs.append(level)
        self.top_down_levels = (2, 3)
        self.position_encoding = SinePositions(d_model)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk maps (finest first) -> (features, position encodings), finest first."""
        n = len(self.convs) - 1
        features: list[torch.Tensor] = [torch.empty(0)] * (n + 1)
        positions: list[torch.Tensor] = [torch.empty(0)] * (n + 1)
        previous: torch.Tensor | None = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and previous is not None:
                top_down = F.interpolate(
                    previous.to(dtype=torch.float32), scale_factor=2.0, mode="nearest", antialias=False
                )
                previous = lateral + top_down
            else:
                previous = lateral
            features[i] = previous
            positions[i] = self.position_encoding(previous).to(previous.dtype)
        return features, positions


class ImageEncoder(nn.Module):
    """Trunk + neck; the stride-32 level is discarded. [B, 3, S, S] -> (features, positions),
    three levels each (strides 4, 8, 16), 256 channels."""

    def __init__(self, size: Sam2Size) -> None:
        super().__init__()
        self.trunk = Hiera(size)
        self.neck = FpnNeck(size.channel_list)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, positions = self.neck(self.trunk(images))
        return features[:-1], positions[:-1]
