"""The STCN network: key encoder, value encoder, memory read and decoder.

Shapes use B = batch, K = objects, N = memory positions (frames x h x w), (h, w) = 1/16 of the
padded input size (H, W), or 1/8 with ``model.output_stride: 8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from twoshot.config import InferenceConfig, ModelConfig
from twoshot.model.aggregate import aggregate_logits
from twoshot.model.interface import Propagator, VOSModel, Wrap, inference_memory_format, no_wrap
from twoshot.model.preprocess import pad_divide_by, unpad
from twoshot.model.stcn.memory import memory_affinity, readout
from twoshot.model.stcn.modules import Decoder, KeyEncoder, KeyProjection, ResBlock, ValueEncoder


@dataclass
class KeyFeatures:
    """What the key encoder gives for a batch of frames."""

    key: torch.Tensor  # [B, key_dim, h, w]   memory / query key
    thin: torch.Tensor  # [B, value_dim, h, w] key_comp(f16), the decoder's query half
    f16: torch.Tensor  # [B, C16, h, w]       goes to the value encoder's fuser
    f8: torch.Tensor  # [B, C8, H/8, W/8]    decoder skip
    f4: torch.Tensor  # [B, C4, H/4, W/4]    decoder skip

    def index(self, item: slice | int | torch.Tensor) -> KeyFeatures:
        """Select batch entries (e.g. frames) from every feature map."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[item : item + 1] if isinstance(item, int) else t[item]

        return KeyFeatures(pick(self.key), pick(self.thin), pick(self.f16), pick(self.f8), pick(self.f4))

    def clone(self) -> KeyFeatures:
        """A copy owning its storage (not a view of a larger batch)."""
        return KeyFeatures(*(x.clone() for x in (self.key, self.thin, self.f16, self.f8, self.f4)))


class STCN(VOSModel):
    """Space-Time Correspondence Network with STCN's parameter names."""

    kind = "stcn"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.key_encoder = KeyEncoder(
            config.key_block, config.key_layers, config.key_width, config.output_stride
        )
        c4, c8, c16 = self.key_encoder.channels
        self.value_encoder = ValueEncoder(
            config.value_block,
            config.value_layers,
            config.value_width,
            c16,
            config.value_dim,
            config.output_stride,
        )
        self.key_proj = KeyProjection(c16, config.key_dim)
        self.key_comp = nn.Conv2d(c16, config.value_dim, 3, padding=1)
        self.decoder = Decoder(2 * config.value_dim, (c4, c8, c16), config.decoder_dims)

    def encode_key(self, images: torch.Tensor) -> KeyFeatures:
        """Key features of normalised, padded frames. images [B,3,H,W] (H, W multiples of 16)."""
        f16, f8, f4 = self.key_encoder(images)
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4)

    def encode_value(self, images: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Memory values of K objects per frame, in one batched encoder call.

        images [B,3,H,W]; key_f16 [B,C16,h,w]; masks [B,K,H,W] (probabilities or 0/1).
        Each object's "others" channel is the sum of the other objects' masks.
        Returns [B,K,value_dim,h,w].
        """
        batch, objects, height, width = masks.shape
        if objects > 1:
            # others[:, i] = sum of masks[:, j] for j != i, summed in index order like STCN.
            index = torch.tensor(
                [[j for j in range(objects) if j != i] for i in range(objects)], device=masks.device
            )
            others = masks[:, index].sum(dim=2)
        else:
            others = torch.zeros_like(masks)
        flat_images = images.unsqueeze(1).expand(-1, objects, -1, -1, -1).reshape(-1, 3, height, width)
        values = self.value_encoder(
            flat_images, key_f16, masks.reshape(-1, 1, height, width), others.reshape(-1, 1, height, width)
        )
        return values.view(batch, objects, *values.shape[1:])

    def decode(self, readout_values: torch.Tensor, query: KeyFeatures) -> torch.Tensor:
        """Object logits from memory readouts. readout_values [B,K,Cv,h,w] -> [B,K,H,W]."""
        batch, objects = readout_values.shape[:2]
        logits = self.decoder(readout_values.flatten(0, 1), query.thin, query.f8, query.f4)
        return logits.view(batch, objects, *logits.shape[2:])

    def segment(
        self,
        query: KeyFeatures,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        top_k: int | None = None,
        selector: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment K objects in one query frame per batch entry from memory.

        query: key features of one frame per batch entry ([B,...]).
        memory_keys [B,Ck,N]; memory_values [B,K,Cv,N]; top_k None = full softmax (training).
        selector [B,K]: 1 for objects that exist (training masks absent second objects).
        Returns (logits [B,K+1,H,W] after soft aggregation, prob [B,K+1,H,W] = softmax(logits)),
        background first.
        """
        batch, _, h, w = query.key.shape
        affinity = memory_affinity(memory_keys, query.key.flatten(2), top_k)
        values = readout(affinity, memory_values)
        values = values.view(*values.shape[:3], h, w)
        prob = torch.sigmoid(self.decode(values, query))
        if selector is not None:
            prob = prob * selector[:, :, None, None]
        logits = aggregate_logits(prob, dim=1)
        return logits, torch.softmax(logits, dim=1)

    def propagator(self, config: InferenceConfig, wrap: Wrap = no_wrap) -> Propagator:
        """STCN's inference operations (:class:`~twoshot.model.stcn.propagator.STCNPropagator`):
        on this network when ``config.exact``, else on :meth:`fast_copy` (made now, from the
        weights as they are)."""
        from twoshot.model.stcn.propagator import STCNPropagator

        if config.exact:
            return STCNPropagator(self, config, wrap)
        # Module.to's stubs lack memory_format, which it takes at run time.
        fast = self.fast_copy().to(memory_format=inference_memory_format(config))  # type: ignore[call-overload]
        return STCNPropagator(fast, config, wrap)

    def fast_copy(self) -> STCN:
        """An inference-only STCN computing the same function with less work: BatchNorms folded
        into the encoders' convolutions, and the decoder's first block computing the frame's
        shared half once for all objects, and so does the value fuser's first block for the key
        features (:mod:`twoshot.model.fast_inference`). Modules it does not rewrite are shared
        with this network; this network is unchanged."""
        from twoshot.model.fast_inference import SharedInputResBlock, fold_batch_norms, with_modules

        value_encoder = fold_batch_norms(self.value_encoder)  # a copy: rewritten in place below
        fuser_block = value_encoder.fuser.block1
        compress = self.decoder.compress
        assert isinstance(fuser_block, ResBlock) and isinstance(compress, ResBlock)
        value_channels = fuser_block.conv1.in_channels - self.key_encoder.channels[2]
        value_encoder.fuser.block1 = SharedInputResBlock(fuser_block, value_channels)
        return with_modules(
            self,
            key_encoder=fold_batch_norms(self.key_encoder),
            value_encoder=value_encoder,
            decoder=with_modules(self.decoder, compress=SharedInputResBlock(compress, self.config.value_dim)),
        ).eval()

    def clip_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment frames 1..T-1 of each clip from frame 0's masks, as STCN trains (DESIGN.md §3).

        Frame 0 and its masks become the memory; frame 1 is segmented from it; frame 1's
        *predicted* masks are encoded into a second memory frame; frame 2 is segmented from
        memory {0, 1}; and so on. rgb [B,T,3,H,W] normalised frames, T >= 2; first_masks
        [B,K,H,W] (0/1 floats); selector [B,K] 1 for objects present in the clip (absent
        second objects are zeroed before aggregation). Frames whose size is not a multiple
        of 16 are zero-padded and the outputs cropped back.
        Returns (logits, probs), each [B, T-1, K+1, H, W], background first.
        """
        batch, frames = rgb.shape[:2]
        if frames < 2:
            raise ValueError(f"a training clip needs at least 2 frames, got {frames}")
        rgb, pad = pad_divide_by(rgb, 16)
        first_masks, _ = pad_divide_by(first_masks, 16)
        # One key-encoder call for every frame of every clip (the key never depends on masks).
        feats = self.encode_key(rgb.flatten(0, 1))  # [B*T, ...], clip-major
        h, w = feats.key.shape[-2:]
        keys = feats.key.view(batch, frames, -1, h, w)

        def frame(t: int) -> KeyFeatures:
            return feats.index(slice(t, None, frames))  # frame t of every clip

        values = [self.encode_value(rgb[:, 0], frame(0).f16, first_masks)]  # [B,K,Cv,h,w]
        all_logits, all_probs = [], []
        for t in range(1, frames):
            memory_keys = keys[:, :t].transpose(1, 2).flatten(2)  # [B,Ck,t*h*w], frame-major
            memory_values = torch.stack(values, dim=3).flatten(3)  # [B,K,Cv,t*h*w], same order
            logits, prob = self.segment(frame(t), memory_keys, memory_values, top_k=None, selector=selector)
            all_logits.append(logits)
            all_probs.append(prob)
            if t + 1 < frames:
                # STCN encodes the *predicted* (aggregated, soft) masks, so errors propagate
                # through the clip the way they do at inference.
                values.append(self.encode_value(rgb[:, t], frame(t).f16, prob[:, 1:]))
        logits = unpad(torch.stack(all_logits, dim=1), pad)
        probs = unpad(torch.stack(all_probs, dim=1), pad)
        return logits, probs
