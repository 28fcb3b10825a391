"""twoshot: video object segmentation trained from two labeled frames per video.

Implements *Two-shot Video Object Segmentation* (Yan et al., CVPR 2023) for any memory-based
VOS model behind one interface: STCN, the paper's model, and Cutie (CVPR 2024), both loading
their published checkpoints unchanged.
"""

from typing import Any

from twoshot._version import __version__

__all__ = ["__version__", "Predictor"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import twoshot`` stays light (no torch) until the Predictor is asked for.
    if name == "Predictor":
        from twoshot.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'twoshot' has no attribute {name!r}")
