"""Training: the STCN loop, its loss and clip forward pass, and the two-shot extension point.

The public entry points are re-exported lazily (``from twoshot.train import train``) so that
importing a light submodule (``twoshot.train.targets``) does not load the whole loop.
"""

from __future__ import annotations

from twoshot.lazy import lazy_exports

_EXPORTS = {
    "train": "twoshot.train.trainer",
    "Trainer": "twoshot.train.trainer",
    "TrainingDiverged": "twoshot.train.trainer",
    "build_stage_dataset": "twoshot.train.recipes",
    "STAGES": "twoshot.train.trainer",
    "TrainingRegime": "twoshot.train.regimes",
    "SupervisedRegime": "twoshot.train.regimes",
    "ClipOutput": "twoshot.train.forward",
    "forward_batch": "twoshot.train.forward",
    "clip_loss": "twoshot.train.loss",
    "bootstrap_p": "twoshot.train.loss",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
