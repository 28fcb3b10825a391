"""The classes of the architectures ``model.kind`` names, and building a model from a config.

Each kind maps to the module and class implementing :class:`twoshot.model.interface.VOSModel`;
modules are imported on first use so that loading STCN never imports Cutie's code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from twoshot.config import MODEL_KINDS, ModelConfig
from twoshot.errors import UserError

if TYPE_CHECKING:  # the CLI reads MODEL_KINDS without importing torch
    from twoshot.model.interface import VOSModel

_CLASSES: dict[str, str] = {
    "stcn": "twoshot.model.network:STCN",
    "cutie": "twoshot.model.cutie:Cutie",
}


def model_class(kind: str) -> type[VOSModel]:
    """The VOSModel subclass of architecture ``kind``; UserError listing the kinds if unknown."""
    if kind not in MODEL_KINDS:
        raise UserError(f"unknown model {kind!r}; choose one of: {', '.join(MODEL_KINDS)}")
    module, name = _CLASSES[kind].split(":")
    cls: type[VOSModel] = getattr(importlib.import_module(module), name)
    return cls


def build_model(config: ModelConfig | None = None) -> VOSModel:
    """A randomly initialised model of ``config.kind`` with its sizes (published STCN if None).

    If ``config.backbone_weights`` names torchvision ImageNet ResNet files they are loaded
    into the model's encoders (see :mod:`twoshot.model.backbone_weights`).
    """
    from twoshot.model.backbone_weights import load_backbone_weights

    config = config or ModelConfig()
    model = model_class(config.kind)(config)
    if config.backbone_weights:
        load_backbone_weights(model, config.backbone_weights)
    return model
