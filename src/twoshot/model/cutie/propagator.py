"""Cutie's inference behind the model-agnostic :class:`~twoshot.model.interface.Propagator`.

Per frame the engine calls :meth:`CutiePropagator.segment` (when the run has memory) and then
:meth:`CutiePropagator.memorize` with the frame's final probabilities; this reproduces one
``InferenceCore.step`` of the reference (hkchengrex/Cutie ``inference/inference_core.py``):

- segment: read each bucket's memory (anisotropic L2, top-k), fuse with the sensory memory
  and the previous frame's masks, run the object transformer per bucket, decode all objects
  together; the decoder updates the sensory memory when ``frame - last memory frame`` is in
  the stagger set (every frame for ``stagger_updates >= mem_every``).
- memorize: remember the masks as the next frame's "last mask"; on a memory frame, encode all
  objects' masks (new objects start with a zero sensory memory), add the values to the
  buckets (FIFO or long-term consolidation), add the object summaries to each object's
  running sums, and take the mask encoder's deep sensory update.
"""

from __future__ import annotations

import numpy as np
import torch

from twoshot.config import InferenceConfig
from twoshot.errors import UserError
from twoshot.model.cutie.network import Cutie, CutieFeatures
from twoshot.model.cutie.store import KeyValueMemory, MemorySettings
from twoshot.model.interface import (
    PERMANENT,
    TEMPORARY,
    FrameFeatures,
    FramePreparation,
    Propagator,
    RunMemory,
    Wrap,
    no_wrap,
)
from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

# The reference's evaluation defaults (eval_config.yaml).
MAX_MEM_FRAMES = 5  # working memory without long-term memory, the permanent frame included
STAGGER_UPDATES = 5  # decoder sensory updates per mem_every frames
NUM_PROTOTYPES = 128
MAX_NUM_TOKENS = 10_000
BUFFER_TOKENS = 2_000

# Computed in float32 as normalising a black pixel does, so that it equals that bit for bit.
PAD_VALUE: tuple[float, ...] = tuple(
    ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).tolist()
)
"""Per-channel value of black after ImageNet normalisation. The reference pads frames with
black *before* normalising them, so its padding is this value, not zero; frames padded with
zeros after normalisation segment differently near (and, through global attention, far from)
the padding."""


def memory_settings(config: InferenceConfig) -> MemorySettings:
    """Cutie's memory settings under ``config``.

    ``max_memory_frames`` None: working memory of ``MAX_MEM_FRAMES`` (5) frames, FIFO after
    the permanent first one (Cutie's DAVIS / YouTube-VOS setting). An integer M >= 2:
    long-term memory consolidating working memory at M frames down to ``M // 2`` (Cutie's
    ``long_term`` max 10 / min 5 is M = 10), ``NUM_PROTOTYPES`` prototypes per consolidation,
    at most ``MAX_NUM_TOKENS`` long-term entries. top_k: ``config.top_k``.
    """
    frames = config.max_memory_frames
    if frames is None:
        return MemorySettings(max_mem_frames=MAX_MEM_FRAMES, top_k=config.top_k)
    if frames < 2:
        raise UserError(
            f"config key 'inference.max_memory_frames': cutie's long-term memory needs at "
            f"least 2 working frames, got {frames}"
        )
    return MemorySettings(
        max_mem_frames=frames,
        long_term=True,
        min_mem_frames=max(1, frames // 2),
        num_prototypes=NUM_PROTOTYPES,
        max_num_tokens=MAX_NUM_TOKENS,
        buffer_tokens=BUFFER_TOKENS,
        top_k=config.top_k,
    )


def stagger_frames(mem_every: int, updates: int = STAGGER_UPDATES) -> frozenset[int]:
    """Frame offsets since the last memory frame at which the decoder updates the sensory memory:
    all of 1..mem_every when ``updates >= mem_every``, else ``updates`` evenly spread ones."""
    if updates >= mem_every:
        return frozenset(range(1, mem_every + 1))
    return frozenset(int(v) for v in np.round(np.linspace(1, mem_every, updates)).astype(int))


class CutieRunMemory:
    """Everything one Cutie propagation run remembers (one per :meth:`CutiePropagator.new_memory`).

    store: working / long-term key-value memory per bucket; sensory [1, K, C_s, h, w];
    summaries [1, K, Q, C_e + 1] running sums of object summaries; last_mask [1, K, Hp, Wp]
    the previous frame's object probabilities; frame: index in the run of the frame being
    processed; last_memory_frame: index of the latest memory frame.
    """

    def __init__(self, settings: MemorySettings) -> None:
        self.store = KeyValueMemory(settings)
        self.sensory: torch.Tensor | None = None
        self.summaries: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None
        self.frame = 0
        self.last_memory_frame = 0
        self._num_objects = 0
        self._pending: tuple[int, int] | None = None  # objects enabled since the last memory frame

    @property
    def num_objects(self) -> int:
        """Objects enabled so far."""
        return self._num_objects

    @property
    def peak_frames(self) -> int:
        """Most working-memory frames any bucket held at once (long-term entries not counted)."""
        return self.store.peak_frames

    @property
    def long_term_tokens(self) -> int:
        """Long-term entries held now by the bucket with the most."""
        return self.store.long_term_tokens

    def add_objects(self, count: int) -> None:
        """Enable ``count`` new objects; they form a bucket created by the next memory frame
        (objects enabled again before it join the same bucket)."""
        if count < 1:
            return
        first = self._pending[0] if self._pending else self._num_objects
        self._num_objects += count
        self._pending = (first, self._num_objects)


class CutiePropagator(Propagator):
    """Cutie inference under ``config``: top-k, mem_every (for the stagger rule), the memory
    mapping of :func:`memory_settings`, AMP on CUDA; heavy calls go through ``wrap``.

    settings: override the memory settings (tests, studies).
    """

    segments_every_frame = True
    # As the reference's test pipeline: [0, 1] frames resized only when larger than
    # inference.size, padded with black, normalised in the network.
    preparation = FramePreparation(normalize_first=False, upscale=False)
    pad_value = PAD_VALUE  # normalised frames padded with this equal the reference's (see PAD_VALUE)

    def __init__(
        self,
        model: Cutie,
        config: InferenceConfig,
        wrap: Wrap = no_wrap,
        settings: MemorySettings | None = None,
    ) -> None:
        if config.include_last:
            raise UserError(
                "config key 'inference.include_last': cutie has no temporary memory frame "
                "(its sensory memory carries the previous frame); set it to false"
            )
        super().__init__(config)
        self.model = model
        self.settings = settings or memory_settings(config)
        self.stagger = stagger_frames(config.mem_every)
        self._encode_image = wrap(model.encode_image, "encode_image")
        self._encode_mask = wrap(model.encode_mask, "encode_mask")
        self._object_readout = wrap(model.object_readout, "object_readout")
        self._segment = wrap(model.segment, "decode")

    def encode_frames(self, images: torch.Tensor) -> CutieFeatures:
        """Image features of normalised, padded frames [B, 3, Hp, Wp] (see :meth:`Cutie.encode_image`)."""
        with self.autocast(images):
            features: CutieFeatures = self._encode_image(images)
        return features

    def new_memory(self) -> CutieRunMemory:
        """An empty memory for a new run (own buckets, sensory state, counters)."""
        return CutieRunMemory(self.settings)

    def segment(self, memory: RunMemory, image: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Segment the enabled objects -> float32 [1, 1+K, Hp, Wp], background first."""
        assert isinstance(memory, CutieRunMemory) and isinstance(features, CutieFeatures)
        if memory.sensory is None or memory.summaries is None or memory.last_mask is None:
            raise RuntimeError("segment before any memory frame")
        update = memory.frame - memory.last_memory_frame in self.stagger
        with self.autocast(image):
            visual = memory.store.read(features.key, features.selection)
            parts = []
            for bucket, readout in zip(memory.store.buckets, visual):
                objects = slice(bucket.first, bucket.stop)
                part, _ = self._object_readout(
                    features.pix_feat,
                    readout,
                    memory.sensory[:, objects],
                    memory.last_mask[:, objects],
                    memory.summaries[:, objects].unsqueeze(2),
                )
                parts.append(part)
            # The reference stacks per-object tensors here (contiguous); layouts change floats.
            readouts = torch.cat(parts, dim=1).contiguous()
            sensory, _, prob = self._segment(
                features.f8, features.f4, readouts, memory.sensory, update_sensory=update
            )
        if update:
            memory.sensory = sensory.contiguous()
        return prob.float()

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
        """Record the frame's masks; on a memory frame (lifetime PERMANENT) encode them into memory.

        prob [1, 1+K, Hp, Wp]. ``pinned`` is not used: as in the reference, each bucket's first
        memory frame is its permanent one, and later annotated frames are ordinary memory.
        """
        assert isinstance(memory, CutieRunMemory) and isinstance(features, CutieFeatures)
        if lifetime == TEMPORARY:
            raise ValueError("cutie has no temporary memory frame")
        masks = prob[:, 1:]
        if masks.shape[1] != memory.num_objects:
            raise ValueError(f"probabilities for {masks.shape[1]} objects, {memory.num_objects} enabled")
        memory.last_mask = masks
        if lifetime == PERMANENT:
            self._add_memory(memory, image, features, masks)
            memory.last_memory_frame = memory.frame
        elif lifetime is not None:
            raise ValueError(f"unknown memory lifetime {lifetime!r}")
        memory.frame += 1

    def _add_memory(
        self, memory: CutieRunMemory, image: torch.Tensor, features: CutieFeatures, masks: torch.Tensor
    ) -> None:
        """Encode ``masks`` [1, K, Hp, Wp] and add them to every memory of the run."""
        if memory._pending is not None:
            memory.store.new_bucket(*memory._pending)
            memory._pending = None
        known = 0 if memory.sensory is None else memory.sensory.shape[1]
        if known < memory.num_objects:
            h, w = features.key.shape[-2:]
            fresh = torch.zeros(
                (1, memory.num_objects - known, self.model.sensory_dim, h, w), device=features.key.device
            )
            memory.sensory = fresh if memory.sensory is None else torch.cat([memory.sensory, fresh], dim=1)
        with self.autocast(image):
            values, sensory, summaries = self._encode_mask(image, features.pix_feat, memory.sensory, masks)
            memory.store.add(features.key, features.shrinkage, features.selection, values)
        if memory.summaries is None:
            memory.summaries = summaries
        else:
            old = memory.summaries.shape[1]
            memory.summaries = torch.cat([memory.summaries + summaries[:, :old], summaries[:, old:]], dim=1)
        memory.sensory = sensory.contiguous()
