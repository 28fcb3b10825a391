"""VOS networks behind one interface (:class:`VOSModel`): STCN (Cheng et al., NeurIPS 2021),
parameter-compatible with its checkpoints, and Cutie (Cheng et al., CVPR 2024)."""

from twoshot.model.checkpoint import load_checkpoint, load_model, save_weights
from twoshot.model.interface import Propagator, RunMemory, VOSModel
from twoshot.model.network import STCN, KeyFeatures
from twoshot.model.registry import build_model, model_class

__all__ = [
    "STCN",
    "KeyFeatures",
    "Propagator",
    "RunMemory",
    "VOSModel",
    "build_model",
    "load_checkpoint",
    "load_model",
    "model_class",
    "save_weights",
]
