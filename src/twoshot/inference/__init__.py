"""Inference: the propagation engine for any model, bidirectional pseudo-labelling.

- :class:`Predictor`: load a checkpoint, segment a video from Python.
- :class:`PropagationEngine`: a model's inference over one video (forward, or from labeled frames
  in both directions), with per-video key-feature caching.
- :func:`assign_sources`: the nearest-labeled-frame rule of the two-shot pseudo labels.
- :func:`build_bank` (``twoshot.inference.pseudo_label``): the pseudo-label bank of a dataset.
"""

from twoshot.inference.engine import PropagationEngine
from twoshot.inference.frames import EngineStats, PropagationResult
from twoshot.inference.predictor import Predictor
from twoshot.inference.schedule import assign_sources
from twoshot.lazy import lazy_exports

__all__ = [
    "Predictor",
    "PropagationEngine",
    "PropagationResult",
    "EngineStats",
    "assign_sources",
    "build_bank",
]
# build_bank pulls in the dataset readers and writers: imported on first use only.
__getattr__ = lazy_exports(__name__, {"build_bank": "twoshot.inference.pseudo_label"})
