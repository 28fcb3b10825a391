"""SAM's prompt encoder and mask decoder as SAM 2 uses them (``sam_prompt_encoder.*``,
``sam_mask_decoder.*``).

The prompt encoder turns clicks / box corners into sparse tokens (random-Fourier position
encoding plus a learned embedding per label) and a mask prompt into a dense map (two
stride-2 convolutions); without a mask, a learned "no mask" vector fills the map. The
decoder runs a two-way transformer between the output tokens (object score, IoU, four mask
tokens) plus the prompt tokens and the image embedding, upsamples the embedding x4 with
SAM 2's high-resolution skip features, and predicts masks as dot products of the upsampled
map with per-token hypernetwork outputs.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from twoshot.model.sam2.layers import MLP, Attention, LayerNorm2d, RandomFourierPositions

NUM_MULTIMASK_OUTPUTS = 3
STABILITY_DELTA = 0.05  # the video predictor's dynamic multimask settings
STABILITY_THRESHOLD = 0.98


class PromptEncoder(nn.Module):
    """Sparse (points) and dense (mask) prompt embeddings for a ``image_size`` square input."""

    def __init__(self, embed_dim: int, embedding_size: int, image_size: int, mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = (embedding_size, embedding_size)
        self.input_image_size = (image_size, image_size)
        self.mask_input_size = (4 * embedding_size, 4 * embedding_size)
        self.pe_layer = RandomFourierPositions(embed_dim // 2)
        # labels 0 / 1: negative / positive click, 2 / 3: box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_positions(self) -> torch.Tensor:
        """The position encoding of the image embedding's grid -> [1, C, h, w]."""
        return self.pe_layer.grid(*self.embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Points [B, N, 2] (x, y in input pixels), labels [B, N] (-1 = padding) -> [B, N(+1), C]."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)
        embedding = self.pe_layer.points(points, self.input_image_size)
        embedding = torch.where(
            (labels == -1).unsqueeze(-1),
            torch.zeros_like(embedding) + self.not_a_point_embed.weight,
            embedding,
        )
        for label, learned in enumerate(self.point_embeddings):
            weight = cast(nn.Embedding, learned).weight
            embedding = torch.where((labels == label).unsqueeze(-1), embedding + weight, embedding)
        return embedding

    def forward(
        self, points: tuple[torch.Tensor, torch.Tensor], masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sparse [B, N+1, C], dense [B, C, h, w]) from points (coords, labels) and an
        optional mask prompt [B, 1, 4h, 4w] (logits)."""
        batch = points[0].shape[0]
        sparse = torch.empty((batch, 0, self.embed_dim), device=self.no_mask_embed.weight.device)
        sparse = torch.cat([sparse, self.embed_points(points[0], points[1], pad=True)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.embedding_size)
        return sparse, dense


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Two :class:`TwoWayAttentionBlock` s and a final token->image attention."""

    def __init__(self, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image / image_pe [B, C, h, w], tokens [B, N, C] -> (tokens [B, N, C], image [B, hw, C])."""
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        out = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + out), keys


class MaskDecoder(nn.Module):
    """SAM 2's mask decoder with object-score prediction and high-resolution skips."""

    def __init__(
        self, dim: int = 256, use_high_res_features: bool = True, dynamic_multimask: bool = True
    ) -> None:
        super().__init__()
        self.use_high_res_features = use_high_res_features
        self.dynamic_multimask = dynamic_multimask
        self.transformer = TwoWayTransformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.num_mask_tokens = NUM_MULTIMASK_OUTPUTS + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def predict(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four masks: (logits [B, 4, 4h, 4w], IoU [B, 4], mask tokens [B, 4, C],
        object score logits [B, 1]). image [B, C, h, w]; image_pe [1, C, h, w];
        high_res: the stride-4 / stride-8 maps through conv_s0 / conv_s1, or [] without
        high-resolution features (the upscaling adds nothing)."""
        output_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight]
        )
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        src = image + dense
        pos = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token = hs[:, 1, :]
        mask_tokens = hs[:, 2 : 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up1, norm, act1, up2, act2 = self.output_upscaling
        if high_res:
            feat_s0, feat_s1 = high_res
            upscaled = act1(norm(up1(src) + feat_s1))
            upscaled = act2(up2(upscaled) + feat_s0)
        else:
            upscaled = act2(up2(act1(norm(up1(src)))))
        hyper = torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token), mask_tokens, self.pred_obj_score_head(hs[:, 0, :])

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        high_res: list[torch.Tensor],
        dynamic: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask logits [B, M, 4h, 4w], IoU [B, M], output tokens [B, M', C], object score [B, 1]):
        multimask: the three multimask outputs (M = M' = 3); else one mask (M = M' = 1), the
        token always the single-mask one; dynamic (the video predictor's dynamic multimask,
        which the reference skips in training; only with ``dynamic_multimask``): the single
        mask is replaced by the best-IoU multimask output where it is unstable."""
        masks, iou, tokens, score = self.predict(image, image_pe, sparse, dense, high_res)
        if multimask:
            return masks[:, 1:, :, :], iou[:, 1:], tokens[:, 1:], score
        if dynamic and self.dynamic_multimask:
            masks, iou = _stable_or_best(masks, iou)
        else:
            masks, iou = masks[:, 0:1], iou[:, 0:1]
        return masks, iou, tokens[:, 0:1], score


def _stable_or_best(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-mask output where it is stable (IoU of its thresholds at +-delta >= the
    threshold), else the multimask output with the best predicted IoU. masks [B, 4, H, W]."""
    multi, multi_iou = masks[:, 1:, :, :], iou[:, 1:]
    best = torch.argmax(multi_iou, dim=-1)
    batch = torch.arange(multi_iou.size(0), device=iou.device)
    best_masks = multi[batch, best].unsqueeze(1)
    best_iou = multi_iou[batch, best].unsqueeze(1)
    single, single_iou = masks[:, 0:1, :, :], iou[:, 0:1]
    flat = single.flatten(-2)
    inner = torch.sum(flat > STABILITY_DELTA, dim=-1).float()
    outer = torch.sum(flat > -STABILITY_DELTA, dim=-1).float()
    stability = torch.where(outer > 0, inner / outer, 1.0)
    stable = stability >= STABILITY_THRESHOLD
    masks_out = torch.where(stable[..., None, None].expand_as(single), single, best_masks)
    iou_out = torch.where(stable.expand_as(single_iou), single_iou, best_iou)
    return masks_out, iou_out
