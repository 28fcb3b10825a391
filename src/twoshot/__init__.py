"""twoshot: video object segmentation trained from two labeled frames per video.

Implements *Two-shot Video Object Segmentation* (Yan et al., CVPR 2023) on top of an STCN
network that loads the published checkpoints unchanged.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
