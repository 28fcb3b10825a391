"""The Cutie network (Cheng et al., CVPR 2024): pixel encoder and key projection, mask
encoder, pixel feature fuser, object transformer and summarizer, mask decoder.

Parameter names and shapes equal the reference's multi-object ``CUTIE`` (hkchengrex/Cutie
``model/cutie.py``; see ``tests/data/cutie_*_state_dict_keys.tsv``), so its published
weights load with ``load_state_dict(strict=True)``. Differences from the reference:
images arrive already normalised with ImageNet mean/std (the engine normalises every model's
frames), so the network holds no mean/std buffers; BatchNorm follows the module's train /
eval mode (the trainer freezes it where a recipe says so; the reference always freezes the
encoders' BatchNorm).

Shapes: B batch, K objects, (H, W) padded input size (multiples of 16), (h, w) = (H/16, W/16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.config import InferenceConfig, ModelConfig
from twoshot.model.aggregate import aggregate_logits
from twoshot.model.cutie.blocks import ObjectConv2d
from twoshot.model.cutie.decoder import MaskDecoder
from twoshot.model.cutie.encoders import (
    KeyProjection,
    MaskEncoder,
    PixelEncoder,
    PixelFeatureFuser,
    other_objects,
)
from twoshot.model.cutie.memory_read import readout, similarity, softmax_full
from twoshot.model.cutie.spec import cutie_sizes
from twoshot.model.cutie.transformer import ObjectSummarizer, QueryTransformer
from twoshot.model.interface import Propagator, VOSModel, Wrap, no_wrap
from twoshot.model.preprocess import pad_divide_by, unpad

# The aggregated logit of an object with probability 0 (the aggregation clamps to 1e-7).
EMPTY_SLOT_LOGIT = math.log(1e-7 / (1 - 1e-7))

# Training constants of the reference's main stage (train_config.yaml).
NUM_REF_FRAMES = 3  # memory frames a training frame reads (the most recent ones until then random)
DEEP_UPDATE_PROB = 0.2  # chance that encoding a predicted mask also updates the sensory memory


@dataclass
class CutieFeatures:
    """A batch of frames' image features (independent of any mask).

    f8 [B, C8, H/8, W/8] and f4 [B, C4, H/4, W/4]: pixel encoder skips for the decoder;
    pix_feat [B, C_p, h, w]; key [B, Ck, h, w]; shrinkage [B, 1, h, w]; selection [B, Ck, h, w].
    """

    f8: torch.Tensor
    f4: torch.Tensor
    pix_feat: torch.Tensor
    key: torch.Tensor
    shrinkage: torch.Tensor
    selection: torch.Tensor

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CutieFeatures:
        return CutieFeatures(
            fn(self.f8), fn(self.f4), fn(self.pix_feat), fn(self.key), fn(self.shrinkage), fn(self.selection)
        )

    def index(self, item: int | slice | torch.Tensor) -> CutieFeatures:
        """The features of batch entries ``item`` (an int keeps a batch of one)."""
        if isinstance(item, int):
            return self._map(lambda t: t[item : item + 1])
        return self._map(lambda t: t[item])

    def clone(self) -> CutieFeatures:
        """A copy owning its storage (no view of a larger batch's tensors)."""
        return self._map(lambda t: t.clone())


class _LinearPredictor(nn.Module):
    """Auxiliary logits from the sensory memory: a per-object linear map of the pixel features."""

    def __init__(self, sensory_dim: int, pixel_dim: int) -> None:
        super().__init__()
        self.projection = ObjectConv2d(sensory_dim, pixel_dim + 1, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, sensory: torch.Tensor) -> torch.Tensor:
        """pix_feat [B, C_p, h, w], sensory [B, K, C_s, h, w] -> logits [B, K, h, w]."""
        x = self.projection(sensory)
        return (pix_feat.unsqueeze(1) * x[:, :, :-1]).sum(dim=2) + x[:, :, -1]


class AuxHeads(nn.Module):
    """The training-only auxiliary head on the sensory memory (the query auxiliary logits come
    from the object transformer's ``mask_pred``)."""

    def __init__(self, sensory_dim: int, pixel_dim: int) -> None:
        super().__init__()
        self.sensory_aux = _LinearPredictor(sensory_dim, pixel_dim)


class Cutie(VOSModel):
    """Cutie with the reference's parameter names; sizes from ``config`` (Cutie-base if None)."""

    kind = "cutie"
    # The object transformer thresholds its auxiliary masks at 0.5 to restrict attention, so
    # a rounding difference of 1e-6 (channels-last kernels) flips pixels near the threshold
    # and their readout by up to 1e-2, and the masks drift apart over the memory frames:
    # the fast path keeps the reference's layout and stays bit-identical (docs/performance.md).
    channels_last_when_fast = False

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        if config is None:
            from twoshot.config import load_config

            config = load_config("cutie-base").model
        self.config = config
        sizes = cutie_sizes(config)
        self.pixel_encoder = PixelEncoder(config.key_block, config.key_layers, config.key_width)
        c4, c8, c16 = self.pixel_encoder.channels
        self.pix_feat_proj = nn.Conv2d(c16, sizes.pixel_dim, kernel_size=1)
        self.key_proj = KeyProjection(c16, sizes.pixel_dim, config.key_dim)
        self.mask_encoder = MaskEncoder(
            config.value_block,
            config.value_layers,
            config.value_width,
            sizes.pixel_dim,
            config.value_dim,
            sizes.sensory_dim,
        )
        self.mask_decoder = MaskDecoder(sizes.sensory_dim, (c16, c8, c4), config.decoder_dims)
        self.pixel_fuser = PixelFeatureFuser(
            sizes.pixel_dim, config.value_dim, sizes.sensory_dim, sizes.embed_dim
        )
        self.object_transformer = QueryTransformer(
            sizes.embed_dim,
            sizes.num_queries,
            sizes.num_heads,
            sizes.ff_dim,
            sizes.num_blocks,
            sizes.pe_scale,
            sizes.pe_temperature,
        )
        self.object_summarizer = ObjectSummarizer(
            config.value_dim, sizes.embed_dim, sizes.num_queries, sizes.pe_scale, sizes.pe_temperature
        )
        self.aux_computer = AuxHeads(sizes.sensory_dim, sizes.embed_dim)
        # Training-only settings of clip_forward (the trainer sets them from main.cutie).
        self.num_ref_frames = NUM_REF_FRAMES
        self.deep_update_prob = DEEP_UPDATE_PROB

    @property
    def sensory_dim(self) -> int:
        """Channels of the per-object sensory memory."""
        return cutie_sizes(self.config).sensory_dim

    def imagenet_encoders(self) -> dict[str, nn.Module]:
        """The encoders that start from ImageNet ResNets, by name (for backbone loading)."""
        return {"pixel encoder": self.pixel_encoder, "mask encoder": self.mask_encoder}

    def encode_image(self, images: torch.Tensor) -> CutieFeatures:
        """Image features of normalised, padded frames. images [B, 3, H, W] -> CutieFeatures."""
        f16, f8, f4 = self.pixel_encoder(images)
        key, shrinkage, selection = self.key_proj(f16)
        return CutieFeatures(f8, f4, self.pix_feat_proj(f16), key, shrinkage, selection)

    def encode_mask(
        self,
        images: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        masks: torch.Tensor,
        deep_update: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Memory of K objects' masks on a frame.

        images [B, 3, H, W]; pix_feat [B, C_p, h, w]; sensory [B, K, C_s, h, w]; masks
        [B, K, H, W] probabilities. Returns (values [B, K, C_v, h, w], sensory after the deep
        update (unchanged without ``deep_update``), object summaries [B, K, Q, C_e + 1]).
        """
        values, sensory = self.mask_encoder(
            images, pix_feat, sensory, masks, other_objects(masks), deep_update=deep_update
        )
        return values, sensory, self.object_summarizer(masks, values)

    def object_readout(
        self,
        pix_feat: torch.Tensor,
        visual: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        summaries: torch.Tensor,
        selector: torch.Tensor | None = None,
        final_aux: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-object features for the decoder from the pixel memory readout, the sensory
        memory, the previous frame's masks and the object memory.

        pix_feat [B, C_p, h, w]; visual [B, K, C_v, h, w] memory readout; sensory
        [B, K, C_s, h, w]; last_mask [B, K, H, W]; summaries [B, K, T, Q, C_e + 1];
        selector [B, K, 1, 1] or None. The "others" channel is over these K objects only.
        Returns ([B, K, C_e, h, w], the object transformer's auxiliary logits [B, K, h, w]).
        """
        last_mask = F.interpolate(last_mask, size=sensory.shape[-2:], mode="area")
        pixel = self.pixel_fuser(pix_feat, visual, sensory, last_mask, other_objects(last_mask))
        return self.object_transformer(pixel, summaries, selector, final_aux)

    def segment(
        self,
        f8: torch.Tensor,
        f4: torch.Tensor,
        readout_features: torch.Tensor,
        sensory: torch.Tensor,
        update_sensory: bool = True,
        selector: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode K objects and soft-aggregate them.

        f8, f4: pixel encoder skips; readout_features [B, K, C_e, h, w]; sensory
        [B, K, C_s, h, w]; selector [B, K, 1, 1] or None.
        Returns (sensory, updated when ``update_sensory``; logits [B, K+1, H, W]; prob
        [B, K+1, H, W] = softmax(logits)), background first. As in the reference, the
        aggregated logits (not the probabilities) are upsampled x4 from the decoder's 1/4.
        """
        sensory, logits = self.mask_decoder(f8, f4, readout_features, sensory, update_sensory)
        prob = torch.sigmoid(logits)
        if selector is not None:
            prob = prob * selector
        with torch.autocast(prob.device.type, enabled=False):
            logits = aggregate_logits(prob.float(), dim=1)
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        return sensory, logits, torch.softmax(logits, dim=1)

    def propagator(self, config: InferenceConfig, wrap: Wrap = no_wrap) -> Propagator:
        """Cutie's inference operations under ``config`` (see :mod:`twoshot.model.cutie`)."""
        from twoshot.model.cutie.propagator import CutiePropagator

        return CutiePropagator(self, config, wrap)

    def clip_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment frames 1..T-1 of each training clip from frame 0's masks (see :meth:`_clip`).

        Returns (logits, probs), each [B, T-1, K+1, H, W].
        """
        logits, probs, _ = self._clip(rgb, first_masks, selector, with_aux=False)
        return logits, probs

    def training_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`clip_forward` and the auxiliary logits of the reference's training.

        aux["sensory"] [B, T-1, K+1, h, w]: the sensory head's logits (from the sensory memory
        the frame was read with); aux["query"] [B, T-1, K+1, L, h, w]: the object
        transformer's mask logits before its first block and after each block (L = blocks + 1);
        both soft-aggregated with the selector, at 1/16 of the padded input size.
        """
        return self._clip(rgb, first_masks, selector, with_aux=True)

    def _aux_logits(
        self, pix_feat: torch.Tensor, sensory: torch.Tensor, levels: list[torch.Tensor], sel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregated aux logits: (sensory [B, K+1, h, w], query [B, K+1, L, h, w])."""
        with torch.autocast(pix_feat.device.type, enabled=False):
            own = torch.sigmoid(self.aux_computer.sensory_aux(pix_feat, sensory).float()) * sel
            stacked = torch.sigmoid(torch.stack(levels, dim=2).float()) * sel.unsqueeze(2)
            return aggregate_logits(own, dim=1), aggregate_logits(stacked, dim=1)

    def _clip(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`_clip_slots` over as many object slots as the batch's fullest clip fills.

        As the reference (its training wrapper cuts the batch's slots to the largest object
        count), a slot no clip uses is not run: it would hold the aggregation's clamped
        probability 1e-7 and take that share of every pixel's softmax mass, in the masks the
        next frames read too. Its channels come back as logit ``EMPTY_SLOT_LOGIT`` and
        probability 0 (present slots come first in a batch, :class:`~twoshot.data.batch.ClipBatch`).
        """
        slots = selector.shape[1]
        used = max(1, int(selector.sum(dim=1).max()))
        if used >= slots:
            return self._clip_slots(rgb, first_masks, selector, with_aux)
        logits, probs, aux = self._clip_slots(rgb, first_masks[:, :used], selector[:, :used], with_aux)
        missing = slots - used
        return (
            _pad_channels(logits, missing, EMPTY_SLOT_LOGIT),
            _pad_channels(probs, missing, 0.0),
            {name: _pad_channels(value, missing, EMPTY_SLOT_LOGIT) for name, value in aux.items()},
        )

    def _clip_slots(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Segment frames 1..T-1 of each training clip from frame 0's masks, as Cutie trains.

        Frame 0's masks are encoded; each later frame reads (full softmax) the memory of at
        most ``num_ref_frames`` earlier frames (all while there are that few, then a random
        choice per clip) and the object memory of every earlier frame, is decoded, and its
        predicted masks are encoded in turn (the sensory deep update with probability
        ``deep_update_prob``); both attributes start at the reference's values.
        rgb [B, T, 3, H, W] normalised; first_masks [B, K, H, W]; selector [B, K]
        (1 = object present). Frames are zero-padded to a multiple of 16
        and cropped back. Returns (logits, probs, aux): logits and probs [B, T-1, K+1, H, W];
        aux as :meth:`training_forward` says when ``with_aux``, else empty.
        """
        batch, frames = rgb.shape[:2]
        if frames < 2:
            raise ValueError(f"a training clip needs at least 2 frames, got {frames}")
        rgb, pad = pad_divide_by(rgb, 16)
        masks, _ = pad_divide_by(first_masks.float(), 16)
        sel = selector.float()[:, :, None, None]
        feats = self.encode_image(rgb.flatten(0, 1))

        def at(t: torch.Tensor, ti: int) -> torch.Tensor:
            return t.view(batch, frames, *t.shape[1:])[:, ti]

        objects = masks.shape[1]
        h, w = feats.key.shape[-2:]
        sensory = torch.zeros((batch, objects, self.sensory_dim, h, w), device=rgb.device)
        values, sensory, summaries = self.encode_mask(rgb[:, 0], at(feats.pix_feat, 0), sensory, masks)
        memory_values, memory_summaries = [values], [summaries]
        all_logits, all_probs = [], []
        sensory_aux: list[torch.Tensor] = []
        query_aux: list[torch.Tensor] = []
        for ti in range(1, frames):
            if ti <= self.num_ref_frames:
                ref_keys = [[at(feats.key, t)[b] for t in range(ti)] for b in range(batch)]
                ref_shrink = [[at(feats.shrinkage, t)[b] for t in range(ti)] for b in range(batch)]
                ref_values = [[memory_values[t][b] for t in range(ti)] for b in range(batch)]
            else:
                picks = [torch.randperm(ti)[: self.num_ref_frames].tolist() for _ in range(batch)]
                ref_keys = [[at(feats.key, t)[b] for t in p] for b, p in enumerate(picks)]
                ref_shrink = [[at(feats.shrinkage, t)[b] for t in p] for b, p in enumerate(picks)]
                ref_values = [[memory_values[t][b] for t in p] for b, p in enumerate(picks)]
            mk = torch.stack([torch.stack(k, 1).flatten(1) for k in ref_keys])  # [B, Ck, T'hw]
            ms = torch.stack([torch.stack(s, 1).flatten(1) for s in ref_shrink])  # [B, 1, T'hw]
            mv = torch.stack([torch.stack(v, 2).flatten(2) for v in ref_values])  # [B, K, Cv, T'hw]
            with torch.autocast(rgb.device.type, enabled=False):
                affinity = softmax_full(
                    similarity(
                        mk.float(),
                        ms.float(),
                        at(feats.key, ti).flatten(2).float(),
                        at(feats.selection, ti).flatten(2).float(),
                    )
                )
                visual = readout(affinity, mv.float()).view(batch, objects, -1, h, w)
            features, levels = self.object_readout(
                at(feats.pix_feat, ti),
                visual,
                sensory,
                masks,
                torch.stack(memory_summaries, dim=2),
                sel,
                final_aux=with_aux,
            )
            if with_aux:
                # The sensory head reads the sensory memory this frame was segmented with.
                own, query = self._aux_logits(at(feats.pix_feat, ti), sensory, levels, sel)
                sensory_aux.append(own)
                query_aux.append(query)
            sensory, logits, prob = self.segment(
                at(feats.f8, ti), at(feats.f4, ti), features, sensory, selector=sel
            )
            masks = prob[:, 1:]
            all_logits.append(logits)
            all_probs.append(prob)
            if ti < frames - 1:
                deep = bool(torch.rand(()) < self.deep_update_prob)
                values, sensory, summaries = self.encode_mask(
                    rgb[:, ti], at(feats.pix_feat, ti), sensory, masks, deep_update=deep
                )
                memory_values.append(values)
                memory_summaries.append(summaries)
        logits_out = unpad(torch.stack(all_logits, dim=1), pad)
        probs_out = unpad(torch.stack(all_probs, dim=1), pad)
        aux: dict[str, torch.Tensor] = {}
        if with_aux:
            aux = {"sensory": torch.stack(sensory_aux, dim=1), "query": torch.stack(query_aux, dim=1)}
        return logits_out, probs_out, aux


def _pad_channels(values: torch.Tensor, count: int, fill: float) -> torch.Tensor:
    """``values`` [B, T, C, ...] with ``count`` channels of ``fill`` appended along dim 2."""
    extra = values.new_full((*values.shape[:2], count, *values.shape[3:]), fill)
    return torch.cat([values, extra], dim=2)
