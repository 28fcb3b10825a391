"""SAM 2's memory: the memory attention that conditions a frame's features on past frames
(``memory_attention.*``) and the memory encoder that turns a frame and its mask into a
64-channel memory (``memory_encoder.*``).

Memory attention: layers of pre-norm self-attention (RoPE), cross-attention to the memory
tokens (RoPE on the spatial memories, none on the object pointers appended after them) and
an MLP, then a final LayerNorm; its input is the stride-16 features plus 0.1 x their
position encoding. Memory encoder: the mask (already scaled logits) is downsampled x16 by
four stride-2 convolutions with LayerNorm and GELU, added to the projected frame features,
refined by two ConvNeXt blocks and projected to 64 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.model.sam2.layers import LayerNorm2d, RoPEAttention, SinePositions
from twoshot.model.sam2.sizes import HIDDEN_DIM, MEMORY_DIM


class MemoryAttentionLayer(nn.Module):
    """Self-attention, cross-attention to memories, MLP; batch-first [B, N, C] tokens."""

    def __init__(self, dim: int = HIDDEN_DIM, memory_dim: int = MEMORY_DIM, ff_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim, 1)
        self.cross_attn_image = RoPEAttention(dim, 1, kv_in_dim=memory_dim, rope_k_repeat=True)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_pointer_tokens: int
    ) -> torch.Tensor:
        """x [B, N, C]; memory / memory_pos [B, M, C_mem] (the last ``num_pointer_tokens``
        tokens are object pointers, not rotated)."""
        normed = self.norm1(x)
        x = x + self.self_attn(normed, normed, normed)
        normed = self.norm2(x)
        x = x + self.cross_attn_image(
            normed, memory + memory_pos, memory, num_k_exclude_rope=num_pointer_tokens
        )
        normed = self.norm3(x)
        return x + self.linear2(F.relu(self.linear1(normed)))


class MemoryAttention(nn.Module):
    """The stack of :class:`MemoryAttentionLayer` s and a final LayerNorm (``norm``)."""

    def __init__(self, num_layers: int, dim: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        current: torch.Tensor,
        current_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        """Sequence-first tensors: current / current_pos [N, B, C], memory / memory_pos
        [M, B, C_mem] -> conditioned features [N, B, C]."""
        x = current + 0.1 * current_pos
        x = x.transpose(0, 1)
        memory = memory.transpose(0, 1)
        memory_pos = memory_pos.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_pointer_tokens)
        return self.norm(x).transpose(0, 1)


class MaskDownSampler(nn.Module):
    """[B, 1, S, S] -> [B, 256, S/16, S/16]: four 3x3 stride-2 convolutions (x4 channels each)
    with LayerNorm2d and GELU, then a 1x1 convolution (``encoder.i`` as in the reference)."""

    def __init__(self, embed_dim: int = HIDDEN_DIM, num_layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_layers):
            out = channels * 4
            self.encoder.append(nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(out))
            self.encoder.append(nn.GELU())
            channels = out
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """A ConvNeXt block: depthwise 7x7, LayerNorm2d, MLP x4 (as linear layers), layer scale."""

    def __init__(self, dim: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """Two :class:`CXBlock` s (``layers.i``)."""

    def __init__(self, num_layers: int = 2, dim: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """A frame's stride-16 features [B, 256, h, w] and its mask input [B, 1, 16h, 16w] ->
    (memory [B, 64, h, w], its sine position encoding [B, 64, h, w])."""

    def __init__(self, in_dim: int = HIDDEN_DIM, out_dim: int = MEMORY_DIM) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(2, in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.position_encoding = SinePositions(out_dim)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(features.to(masks.device))
        x = self.out_proj(self.fuser(x + masks))
        return x, self.position_encoding(x).to(x.dtype)
