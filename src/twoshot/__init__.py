"""twoshot: video object segmentation trained from two labeled frames per video.

Implements *Two-shot Video Object Segmentation* (Yan et al., CVPR 2023) for any memory-based
VOS model behind one interface: STCN, the paper's model, and Cutie (CVPR 2024), both loading
their published checkpoints unchanged.
"""

from twoshot._version import __version__
from twoshot.lazy import lazy_exports

__all__ = ["__version__", "Predictor"]
# ``import twoshot`` stays light (no torch) until the Predictor is asked for.
__getattr__ = lazy_exports(__name__, {"Predictor": "twoshot.inference.predictor"})
