"""VOS networks behind one interface (:class:`VOSModel`): STCN (Cheng et al., NeurIPS 2021),
parameter-compatible with its checkpoints, and Cutie (Cheng et al., CVPR 2024); each model is
a folder with a spec (:mod:`twoshot.model.spec`) listed in :mod:`twoshot.model.registry`.

The names below are imported on first use: the configuration reads the registry without
importing torch."""

from twoshot.lazy import lazy_exports

_EXPORTS = {
    "STCN": "twoshot.model.stcn.network",
    "KeyFeatures": "twoshot.model.stcn.network",
    "Propagator": "twoshot.model.interface",
    "RunMemory": "twoshot.model.interface",
    "VOSModel": "twoshot.model.interface",
    "build_model": "twoshot.model.registry",
    "model_class": "twoshot.model.registry",
    "load_checkpoint": "twoshot.model.checkpoint",
    "load_model": "twoshot.model.checkpoint",
    "save_weights": "twoshot.model.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
