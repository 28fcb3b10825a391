"""Building blocks SAM 2's parts share: MLPs, channel LayerNorm, multi-head attention (plain and
with rotary position encoding) and the sine / random-Fourier position encodings.

The operations and their order follow the reference (facebookresearch/sam2) where it changes
the bits: under bfloat16 autocast a different but equivalent formula (e.g. a fused
LayerNorm for the channel norm) rounds differently, and the masks drift from SAM 2's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers (``layers.i``) with ``activation`` between them, an optional
    sigmoid at the end. [..., input_dim] -> [..., output_dim]."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else self.act(layer(x))
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [B, C, H, W] maps (``weight`` / ``bias`` per channel)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads] (a view)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, c] -> [B, N, heads * c]."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


class Attention(nn.Module):
    """Multi-head attention with separate q / k / v / out projections; the inner width is
    ``embedding_dim / downsample_rate``; keys and values may have ``kv_in_dim`` channels."""

    def __init__(
        self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, kv_in_dim: int | None = None
    ) -> None:
        super().__init__()
        kv_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide {self.internal_dim} channels")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q [B, Nq, C], k / v [B, Nk, C_kv] -> per-head projections [B, heads, N, c]."""
        return (
            split_heads(self.q_proj(q), self.num_heads),
            split_heads(self.k_proj(k), self.num_heads),
            split_heads(self.v_proj(v), self.num_heads),
        )

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of per-head projections, merged and projected out."""
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, C], k / v [B, Nk, C_kv] -> [B, Nq, C]."""
        return self.attend(*self.project(q, k, v))


def axial_rope_frequencies(dim: int, width: int, height: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations of 2-D axial RoPE for a width x height grid, row-major.

    Returns complex64 [width * height, dim / 2]: the first dim / 4 rotate by the column, the
    others by the row.
    """
    base = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(width * height, dtype=torch.float32)
    cols = (t % width).float()
    rows = torch.div(t, width, rounding_mode="floor").float()
    angle_x = torch.outer(cols, base)
    angle_y = torch.outer(rows, base)
    rot_x = torch.polar(torch.ones_like(angle_x), angle_x)
    rot_y = torch.polar(torch.ones_like(angle_y), angle_y)
    return torch.cat([rot_x, rot_y], dim=-1)


def rotate(x: torch.Tensor, freqs: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Apply RoPE to x [B, heads, N, c] (float32 maths, returned in x's dtype).

    freqs complex [N / repeat, c / 2]; ``repeat`` > 1 tiles them over consecutive blocks of
    N / repeat tokens (memories of several frames).
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    f = freqs.view(1, 1, *freqs.shape)
    if repeat > 1:
        # complex repeat() is unsupported on some devices; expand + flatten is the same
        f = f.unsqueeze(2).expand(-1, -1, repeat, -1, -1).flatten(2, 3)
    return torch.view_as_real(pairs * f).flatten(3).type_as(x)


class RoPEAttention(Attention):
    """:class:`Attention` with 2-D axial rotary position encoding of queries and keys.

    Queries are a square grid of tokens; keys are whole multiples of that grid (memory
    frames, ``rope_k_repeat``) followed by ``num_k_exclude_rope`` tokens left unrotated
    (object pointers).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, kv_in_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._freqs: dict[tuple[int, torch.device], torch.Tensor] = {}

    def frequencies(self, tokens: int, device: torch.device) -> torch.Tensor:
        """RoPE rotations for a square grid of ``tokens`` tokens (cached per size and device)."""
        key = (tokens, device)
        if key not in self._freqs:
            side = math.isqrt(tokens)
            if side * side != tokens:
                raise ValueError(f"RoPE needs a square grid of query tokens, got {tokens}")
            dim = self.internal_dim // self.num_heads
            self._freqs[key] = axial_rope_frequencies(dim, side, side, self.rope_theta).to(device)
        return self._freqs[key]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        """q [B, Nq, C], k / v [B, Nk, C_kv] -> [B, Nq, C]."""
        q, k, v = self.project(q, k, v)
        freqs = self.frequencies(q.shape[-2], q.device)
        rotated = k.size(-2) - num_k_exclude_rope
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError("keys longer than queries need rope_k_repeat")
        q_rot = rotate(q, freqs)
        if rotated > 0:
            k[:, :, :rotated] = rotate(
                k[:, :, :rotated], freqs, rotated // q.shape[-2] if self.rope_k_repeat else 1
            )
        return self.attend(q_rot, k, v)


def sine_position_grid(channels: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """DETR-style normalised sine position encoding of a height x width grid.

    Returns float32 [1, channels, height, width]: channels / 2 for the row, then channels / 2
    for the column, each alternating sin / cos over frequencies 10000^(2i / (channels / 2)).
    """
    half = channels // 2
    scale, eps = 2 * math.pi, 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device).view(1, -1, 1).repeat(1, 1, width)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device).view(1, 1, -1).repeat(1, height, 1)
    rows = rows / (rows[:, -1:, :] + eps) * scale
    cols = cols / (cols[:, :, -1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * (dim_t // 2) / half)
    pos_x = cols[:, :, :, None] / dim_t
    pos_y = rows[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class SinePositions:
    """:func:`sine_position_grid` of ``channels`` channels, cached per size and device."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The encoding for feature maps x [B, C, H, W] -> float32 [B, channels, H, W]."""
        key = (x.shape[-2], x.shape[-1], x.device)
        if key not in self._cache:
            self._cache[key] = sine_position_grid(self.channels, key[0], key[1], x.device)[0]
        return self._cache[key][None].repeat(x.shape[0], 1, 1, 1)


def sine_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D sine encoding of positions [N] -> [N, dim] (sines, then cosines)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RandomFourierPositions(nn.Module):
    """SAM's position encoding by random spatial frequencies (buffer
    ``positional_encoding_gaussian_matrix`` [2, num_pos_feats])."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Points in [0, 1]^2, [..., 2] (x, y) -> [..., 2 * num_pos_feats] (sin, then cos)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The encoding of pixel centres of a height x width grid -> [C, height, width]."""
        ones = torch.ones((height, width), device=self.positional_encoding_gaussian_matrix.device)
        y = (ones.cumsum(dim=0) - 0.5) / height
        x = (ones.cumsum(dim=1) - 0.5) / width
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Pixel coordinates [B, N, 2] (x, y) of an image (height, width) -> [B, N, C]."""
        coords = coords.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self.encode(coords.to(torch.float))
