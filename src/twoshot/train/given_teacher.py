"""A given teacher in place of phase 1 (``twoshot.teacher``, ``twoshot pipeline`` only).

The two-shot method needs a model that propagates the labeled frames into pseudo labels;
the paper trains it (phase 1). A checkpoint that already propagates well (published SAM 2.1
weights, a model trained on another dataset or an earlier run) can take its place: the
pipeline makes the bank with it and trains the configured model on that bank (phase 2).

The teacher may be any registered model, told from its parameter names as ``twoshot infer
--checkpoint`` tells it; its sizes and inference settings are the configuration ``twoshot
train`` saved beside it, else those of the shipped preset its weights fit
(:func:`twoshot.inference.predictor.load_for_inference`).
"""

from __future__ import annotations

from pathlib import Path

from twoshot.config import InferenceConfig
from twoshot.config_checks import check_inference_settings
from twoshot.errors import UserError
from twoshot.model.checkpoint import (
    check_state_dict,
    detect_kind,
    matching_preset,
    read_state_dict,
    saved_config,
)
from twoshot.model.interface import VOSModel
from twoshot.model.registry import build_skeleton, model_kinds

KEY = "twoshot.teacher"


def _named(exc: UserError) -> UserError:
    """``exc`` with its message prefixed by the config key."""
    return UserError(f"config key '{KEY}': {exc}")


def check_teacher(path: str) -> str:
    """Raise UserError naming ``twoshot.teacher`` unless ``path`` holds weights a registered
    model and its configuration (saved beside them, or a shipped preset) can load. Reads the
    weights; builds the network on the meta device only. Returns the teacher's kind."""
    try:
        if not Path(path).is_file():
            raise UserError(f"{path}: checkpoint file not found")
        state = read_state_dict(path)
        kind = detect_kind(state)
        if kind is None:
            raise UserError(
                f"{path}: the weights look like no model ({', '.join(model_kinds())}); "
                f"first keys: {', '.join(list(state)[:3])}"
            )
        saved = saved_config(path)
        if saved is None:
            if matching_preset(state) is None:
                raise UserError(
                    f"{path}: the {kind} weights fit no shipped preset and no config.json "
                    "from 'twoshot train' lies beside them"
                )
        else:
            network = build_skeleton(saved.model)
            check_state_dict(network, state, path)
            check_inference_settings(saved.inference, kind)
    except UserError as exc:
        raise _named(exc) from None
    return kind


def load_teacher(path: str) -> tuple[VOSModel, InferenceConfig]:
    """(teacher model on the CPU, its inference settings) from ``path``; UserError naming
    ``twoshot.teacher`` if the weights do not load."""
    from twoshot.inference.predictor import load_for_inference

    try:
        return load_for_inference(path)
    except UserError as exc:
        raise _named(exc) from None
