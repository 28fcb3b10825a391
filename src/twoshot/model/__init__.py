"""The STCN network (Cheng et al., NeurIPS 2021), parameter-compatible with its checkpoints."""

from twoshot.model.checkpoint import load_checkpoint, load_model, save_weights
from twoshot.model.network import STCN, KeyFeatures, build_model

__all__ = ["STCN", "KeyFeatures", "build_model", "load_checkpoint", "load_model", "save_weights"]
