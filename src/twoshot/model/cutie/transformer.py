"""Cutie's object transformer and object summarizer.

The summarizer pools each object's memory values into ``num_queries`` summaries (half
weighted inside the object's mask, half outside), kept as running sums with their pooled
area. The transformer turns the summaries into object queries that alternately read the
pixel features (attention restricted to the foreground or the background of the current
auxiliary mask, per half of the queries) and write back into them.

Follows the reference (hkchengrex/Cutie ``transformer/*.py``): the same parameter names, the
pre-norm layout (the read-from-pixel residual starts from the *normalised* queries), sine
positional encodings with coordinates normalised to [0, scale], and the same attention calls
(the self-attention also asks for its weights, which selects PyTorch's explicit attention
path; the cross-attentions do not), so float results agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.model.aggregate import aggregate_logits
from twoshot.model.cutie.blocks import ChannelAttentionResBlock, ObjectConv2d


class SinePositionalEncoding(nn.Module):
    """2-D sine/cosine encoding of pixel positions, ``dim`` channels: x then y, each
    interleaving sin and cos over ``dim / 4`` frequencies. Holds ``inv_freq`` as a (saved) buffer."""

    inv_freq: torch.Tensor

    def __init__(self, dim: int, scale: float, temperature: float) -> None:
        super().__init__()
        half = int(math.ceil(dim / 4) * 2)
        self.axis_dim = half  # channels per axis
        self.scale = scale
        inv_freq = 1.0 / (temperature ** (torch.arange(0, half, 2).float() / half))
        self.register_buffer("inv_freq", inv_freq)

    def grid(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The encoding of a height x width grid: [height, width, dim] (channel last)."""

        def axis(n: int) -> torch.Tensor:
            pos = torch.arange(n, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
            pos = pos / (pos[-1] + 1e-6) * self.scale
            angles = torch.einsum("i,j->ij", pos, self.inv_freq)
            return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2, -1)

        emb = torch.zeros((height, width, self.axis_dim * 2), device=self.inv_freq.device, dtype=dtype)
        emb[:, :, : self.axis_dim] = axis(width)
        emb[:, :, self.axis_dim :] = axis(height).unsqueeze(1)
        return emb


class CrossAttention(nn.Module):
    """Pre-norm (optional) multi-head attention of x over mem; positions added to q and k only.

    Returns x' + attention where x' is x after the norm (the reference's residual).
    x [N, L, C], mem [N, S, C], x_pe [N, L, C], mem_pe [N, S, C]; attn_mask bool
    [N * heads, L, S] (True blocks) or None.
    """

    def __init__(self, dim: int, heads: int, norm: bool = True) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm: nn.Module = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mem: torch.Tensor,
        x_pe: torch.Tensor,
        mem_pe: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norm(x)
        out = self.cross_attn(
            x + x_pe, mem + mem_pe, mem, attn_mask=attn_mask, need_weights=False, average_attn_weights=False
        )[0]
        return x + out


class SelfAttention(nn.Module):
    """Pre-norm self-attention; positions added to q and k. x, pe [N, L, C] -> [N, L, C]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        with_pe = x + pe
        return x + self.self_attn(with_pe, with_pe, x)[0]


class FFN(nn.Module):
    """Pre-norm feed-forward block with a residual: x + W2 relu(W1 norm(x))."""

    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    """The pixels' feed-forward step: a channel-attention residual block on the pixel grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.conv = ChannelAttentionResBlock(dim, dim)

    def forward(self, flat: torch.Tensor, batch: int, objects: int, height: int, width: int) -> torch.Tensor:
        """flat [B*K, H*W, C] -> [B, K, C, H, W]."""
        x = flat.view(batch * objects, height, width, self.dim).permute(0, 3, 1, 2).contiguous()
        return self.conv(x).view(batch, objects, self.dim, height, width)


class QueryTransformerBlock(nn.Module):
    """Queries read the pixels (masked), attend to each other, FFN; pixels read the queries."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        self.read_from_pixel = CrossAttention(dim, heads)
        self.self_attn = SelfAttention(dim, heads)
        self.ffn = FFN(dim, ff_dim)
        self.read_from_query = CrossAttention(dim, heads, norm=False)
        self.pixel_ffn = PixelFFN(dim)

    def forward(
        self,
        queries: torch.Tensor,
        pixel: torch.Tensor,
        query_pe: torch.Tensor,
        pixel_pe: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries, query_pe [B*K, Q, C]; pixel [B, K, C, H, W]; pixel_pe [B*K, H*W, C];
        attn_mask [B*K*heads, Q, H*W]. Returns (queries, pixel) of the same shapes."""
        batch, objects, _, height, width = pixel.shape
        flat = pixel.flatten(3, 4).flatten(0, 1).transpose(1, 2).contiguous()
        queries = self.read_from_pixel(queries, flat, query_pe, pixel_pe, attn_mask=attn_mask)
        queries = self.ffn(self.self_attn(queries, query_pe))
        flat = self.read_from_query(flat, queries, pixel_pe, query_pe)
        return queries, self.pixel_ffn(flat, batch, objects, height, width)


class QueryTransformer(nn.Module):
    """The object transformer: refines per-object pixel features with object queries built
    from the object summaries. ``mask_pred[i]`` predicts the auxiliary mask read before block
    i (and, for the last, after all blocks: the auxiliary loss only)."""

    def __init__(
        self,
        dim: int,
        num_queries: int,
        heads: int,
        ff_dim: int,
        num_blocks: int,
        pe_scale: float,
        pe_temperature: float,
    ) -> None:
        super().__init__()
        self.dim, self.num_queries, self.heads = dim, num_queries, heads
        self.query_init = nn.Embedding(num_queries, dim)
        self.query_emb = nn.Embedding(num_queries, dim)
        self.summary_to_query_init = nn.Linear(dim, dim)
        self.summary_to_query_emb = nn.Linear(dim, dim)
        self.pixel_init_proj = ObjectConv2d(dim, dim, kernel_size=1)
        self.pixel_emb_proj = ObjectConv2d(dim, dim, kernel_size=1)
        self.spatial_pe = SinePositionalEncoding(dim, pe_scale, pe_temperature)
        self.blocks = nn.ModuleList(QueryTransformerBlock(dim, heads, ff_dim) for _ in range(num_blocks))
        self.mask_pred = nn.ModuleList(
            nn.Sequential(nn.ReLU(), ObjectConv2d(dim, 1, kernel_size=1)) for _ in range(num_blocks + 1)
        )

    def forward(
        self,
        pixel: torch.Tensor,
        summaries: torch.Tensor,
        selector: torch.Tensor | None = None,
        final_aux: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixel [B, K, C, H, W]; summaries [B, K, T, Q, C+1] (running sums, area last; T
        memory frames, summed); selector [B, K, 1, 1] 1 for objects present (training).
        Returns (pixel [B, K, C, H, W], auxiliary mask logits [B, K, H, W] read before each
        block, and after the last one too when ``final_aux``)."""
        batch, objects, _, height, width = pixel.shape
        summaries = summaries.view(batch * objects, summaries.shape[2], self.num_queries, self.dim + 1)
        sums = summaries[:, :, :, :-1].sum(dim=1)
        area = summaries[:, :, :, -1:].sum(dim=1)
        values = sums / (area + 1e-4)
        queries = self.query_init.weight.unsqueeze(0).expand(
            batch * objects, -1, -1
        ) + self.summary_to_query_init(values)
        query_pe = self.query_emb.weight.unsqueeze(0).expand(
            batch * objects, -1, -1
        ) + self.summary_to_query_emb(values)

        pixel_init = self.pixel_init_proj(pixel)
        pixel_emb = self.pixel_emb_proj(pixel).flatten(3, 4).flatten(0, 1).transpose(1, 2).contiguous()
        grid = self.spatial_pe.grid(height, width, pixel.dtype).flatten(0, 1)  # [H*W, C]
        pixel_pe = grid.unsqueeze(0).expand(batch * objects, -1, -1) + pixel_emb

        pixel = pixel_init
        aux = [self.mask_pred[0](pixel).squeeze(2)]
        for index, block in enumerate(self.blocks):
            attn_mask = self._attention_mask(aux[-1], selector)
            queries, pixel = block(queries, pixel, query_pe, pixel_pe, attn_mask)
            if final_aux or index + 1 < len(self.blocks):
                aux.append(self.mask_pred[index + 1](pixel).squeeze(2))
        return pixel, aux

    def _attention_mask(self, logits: torch.Tensor, selector: torch.Tensor | None) -> torch.Tensor:
        """Which pixels each query may not read: the first half of the queries read the
        pixels where the object wins the soft aggregation of ``logits`` [B, K, H, W], the second
        half the rest; a query blocked everywhere reads everything.
        Returns bool [B*K*heads, Q, H*W], True = blocked."""
        prob = logits.sigmoid()
        if selector is not None:
            prob = prob * selector
        with torch.autocast(prob.device.type, enabled=False):
            aggregated = aggregate_logits(prob.float(), dim=1)
        foreground = (aggregated[:, 1:] >= aggregated.max(dim=1, keepdim=True)[0]).flatten(start_dim=2)
        half = self.num_queries // 2

        def per_query(blocked: torch.Tensor) -> torch.Tensor:
            return blocked.unsqueeze(2).unsqueeze(2).repeat(1, 1, self.heads, half, 1).flatten(0, 2)

        mask = torch.cat([per_query(~foreground), per_query(foreground)], dim=1)
        mask[torch.where(mask.sum(-1) == mask.shape[-1])] = False
        return mask


class ObjectSummarizer(nn.Module):
    """Object summaries of one memory frame: for each object, ``num_queries`` weighted sums of
    its (projected, position-encoded) memory values, half restricted to its mask and half to
    the complement, with the summed weights (area) as an extra last channel."""

    def __init__(
        self, value_dim: int, dim: int, num_queries: int, pe_scale: float, pe_temperature: float
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.pos_enc = SinePositionalEncoding(dim, pe_scale, pe_temperature)
        self.input_proj = nn.Linear(value_dim, dim)
        self.feature_pred = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.weights_pred = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, num_queries)
        )

    def forward(self, masks: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """masks [B, K, H, W] (full resolution); values [B, K, C_v, h, w].
        Returns summaries [B, K, Q, C+1] (weighted sums, then the area)."""
        height, width = values.shape[-2:]
        masks = F.interpolate(masks, size=(height, width), mode="area").unsqueeze(-1)
        half = self.num_queries // 2
        allowed = torch.cat(
            [masks.expand(-1, -1, -1, -1, half), (1 - masks).expand(-1, -1, -1, -1, half)], dim=-1
        )  # [B, K, h, w, Q]
        x = self.input_proj(values.permute(0, 1, 3, 4, 2))
        x = x + self.pos_enc.grid(height, width, x.dtype).unsqueeze(0).unsqueeze(0)
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            features = self.feature_pred(x)
            weights = self.weights_pred(x).sigmoid() * allowed
            sums = torch.einsum("bkhwq,bkhwc->bkqc", weights, features)
            area = weights.flatten(start_dim=2, end_dim=3).sum(2).unsqueeze(-1)
        return torch.cat([sums, area], dim=-1)
