"""STCN's inference operations behind the model-agnostic :class:`Propagator` interface.

Per frame: the key encoder (once per frame and video), a memory read of the run's
:class:`~twoshot.model.stcn.memory_store.MemoryStore` with top-k, the decoder and soft aggregation;
per memory frame, the value encoder on all enabled objects at once. These are the
operations and orders of STCN's ``InferenceCore``, so masks stay bit-identical to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from twoshot.config import InferenceConfig
from twoshot.model.aggregate import aggregate
from twoshot.model.interface import TEMPORARY, FrameFeatures, Propagator, RunMemory, Wrap, no_wrap
from twoshot.model.stcn.memory_store import MemoryStore

if TYPE_CHECKING:
    from twoshot.model.stcn.network import STCN, KeyFeatures


class STCNPropagator(Propagator):
    """STCN inference under ``config``: AMP (CUDA only), top-k, memory cap; heavy calls
    (key encoder, value encoder, decoder) go through ``wrap``."""

    def __init__(self, model: STCN, config: InferenceConfig, wrap: Wrap = no_wrap) -> None:
        super().__init__(config)
        self._encode_key = wrap(model.encode_key, "encode_key")
        self._encode_value = wrap(model.encode_value, "encode_value")
        self._decode = wrap(model.decode, "decode")

    def encode_frames(self, images: torch.Tensor) -> KeyFeatures:
        """Key features of images [B, 3, Hp, Wp] (see :meth:`STCN.encode_key`)."""
        with self.autocast(images):
            features: KeyFeatures = self._encode_key(images)
        return features

    def new_memory(self) -> MemoryStore:
        """An empty memory store capped at ``inference.max_memory_frames``."""
        return MemoryStore(self.config.max_memory_frames)

    def segment(self, memory: RunMemory, image: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Memory read, decoder, sigmoid and soft aggregation -> float32 [1, 1+K, Hp, Wp]."""
        assert isinstance(memory, MemoryStore)
        feats: KeyFeatures = features  # type: ignore[assignment]
        with self.autocast(image):
            readout = memory.read(feats.key, self.config.top_k)
            logits = self._decode(readout, feats)
        return aggregate(torch.sigmoid(logits.float()), dim=1)

    def memorize(
        self,
        memory: RunMemory,
        image: torch.Tensor,
        features: FrameFeatures,
        prob: torch.Tensor,
        lifetime: str | None,
        *,
        pinned: bool = False,
    ) -> None:
        """Encode the values of every enabled object and add the frame (when ``lifetime`` is set)."""
        if lifetime is None:
            return  # STCN keeps no state between frames besides its memory
        assert isinstance(memory, MemoryStore)
        feats: KeyFeatures = features  # type: ignore[assignment]
        with self.autocast(image):
            values = self._encode_value(image, feats.f16, prob[:, 1:])
        memory.add(feats.key[0], values[0], temporary=lifetime == TEMPORARY, pinned=pinned)
