"""Cutie (Cheng et al., CVPR 2024, hkchengrex/Cutie), the second VOS model behind twoshot's
model interface.

Modules: :mod:`.network` (the :class:`Cutie` network with the reference's parameter names),
:mod:`.blocks`, :mod:`.encoders`, :mod:`.decoder`, :mod:`.transformer` (its parts),
:mod:`.memory_read` (anisotropic L2 read), :mod:`.store` (working / long-term memory in
buckets), :mod:`.propagator` (inference), :mod:`.weights` (single-object checkpoints).

Inference follows the reference's ``InferenceCore`` with its evaluation defaults
(``eval_config.yaml``): ``inference.mem_every`` (5) and ``inference.top_k`` (30 in the
cutie presets) as given; ``stagger_updates`` 5; all objects in one chunk; no flip
augmentation; no temporary "last frame" memory (``inference.include_last`` must be false).
Memory, from ``inference.max_memory_frames``:

- None (the default): working memory of 5 frames per bucket: the bucket's first memory
  frame (permanent) and the 4 most recent memory frames (FIFO). This is Cutie's DAVIS /
  YouTube-VOS setting, bounded at any video length.
- M (an integer >= 2): Cutie's long-term memory, for long videos (Cutie's
  ``long_term.max_mem_frames`` = M, ``min_mem_frames`` = M // 2; its own setting, max 10 /
  min 5, is M = 10). When a bucket's working memory reaches M frames (permanent frame
  included), all but the newest ``M // 2 - 1`` non-permanent frames are consolidated into
  128 prototypes (the most used entries, usage = received affinity / reads lived) that join
  the bucket's long-term memory, so a frame reads M // 2 to M - 1 working frames plus the
  long-term entries. The long-term memory is capped at 10 000 entries: on reaching
  10 000 - 128, its least used entries are dropped down to 10 000 - 128 - 2 000.

Objects may be enabled on any frame: the objects enabled together form a *bucket* with its
own memory (frames from its first memory frame on), sensory memory and object summaries;
the object transformer and the "other objects" channels of the pixel fusion run per bucket.
"""

from twoshot.lazy import lazy_exports

# Imported on first use: the configuration reads ``spec`` without importing torch.
_EXPORTS = {
    "Cutie": ".network",
    "CutieFeatures": ".network",
    "CutiePropagator": ".propagator",
    "CutieRunMemory": ".propagator",
    "memory_settings": ".propagator",
    "MemorySettings": ".store",
    "expand_single_object": ".weights",
    "is_single_object": ".weights",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
