"""What a model plugin declares: one :class:`ModelSpec` per architecture.

A model is one folder ``twoshot/model/<kind>/`` whose ``spec.py`` defines ``SPEC`` and one
line in :data:`twoshot.model.registry.BUILTIN_SPECS`. Everything shared (the configuration,
checkpoint loading, the trainer, the demo, the command line's choices) reads the registered
specs and never names a model.

A spec module must not import torch: the configuration reads the specs (sections, checks,
presets) before any network exists. Heavy parts are named as ``"module:attribute"`` strings
and imported on first use (:func:`import_object`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from twoshot.config import InferenceConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class ModelSpec:
    """One architecture, as the rest of twoshot sees it.

    kind: its name in ``model.kind`` (also the name of its own config sections).
    network: ``"module:Class"`` of its :class:`~twoshot.model.interface.VOSModel` subclass, which
    provides the clip forward (training) and the propagator (inference).
    objective: ``"module:Class"`` of its training recipe (loss, optimiser, AMP loss scale; the
    :class:`twoshot.train.objectives.Objective` protocol), built as ``Class(train_config)``.
    checkpoint_prefixes: parameter-name prefixes that every checkpoint of this model has and no
    other model's has (they tell checkpoints apart).
    upgrade_state: ``"module:function"`` taking and returning a state dict, applied to every
    checkpoint of this model on load (expanding older forms), or None.
    presets: names of its shipped presets (``<preset_dir>/<name>.yaml``).
    preset_dir: folder of the preset files; None = the package's ``configs/``.
    sizes: dataclass of the sizes only this model has: the config section ``model.<kind>``.
    train_settings: dataclass of the training settings only this model reads: the sections
    ``static.<kind>`` and ``main.<kind>``.
    check_model: raise UserError naming the key if a ModelConfig of this kind builds no network.
    check_train: raise UserError naming the key if a stage's TrainConfig (``static`` or
    ``main``, the second argument) is out of range for this model.
    check_inference: raise UserError naming the key if this model cannot run InferenceConfig.
    offload: whether its propagator honours ``inference.offload`` (refused for the others).
    demo_preset: the preset ``twoshot demo --model <kind>`` trains (None: no demo).
    demo_overrides: ``key=value`` overrides the demo adds to that preset.
    """

    kind: str
    network: str
    objective: str
    checkpoint_prefixes: tuple[str, ...]
    upgrade_state: str | None = None
    presets: tuple[str, ...] = ()
    preset_dir: Path | None = None
    sizes: type | None = None
    train_settings: type | None = None
    check_model: Callable[[ModelConfig], None] | None = None
    check_train: Callable[[TrainConfig, str], None] | None = None
    check_inference: Callable[[InferenceConfig], None] | None = None
    offload: bool = False
    demo_preset: str | None = None
    demo_overrides: tuple[str, ...] = ()

    def preset_file(self, name: str) -> Path:
        """The YAML file of this model's preset ``name``."""
        if self.preset_dir is not None:
            return self.preset_dir / f"{name}.yaml"
        from importlib import resources

        return Path(str(resources.files("twoshot") / "configs" / f"{name}.yaml"))


def import_object(target: str) -> Any:
    """The attribute named by ``"module:attribute"`` (imported on first use)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


SectionT = TypeVar("SectionT")


def section_of(config_section: Any, kind: str, cls: type[SectionT]) -> SectionT:
    """The ``kind`` plugin section (an instance of ``cls``) of a ModelConfig / TrainConfig.

    A typed accessor for model code: ``sizes: CutieSizes = section_of(model_config, "cutie",
    CutieSizes)``; TypeError if the section is of another class."""
    from twoshot.config import plugin_sections

    value = plugin_sections(config_section)[kind]
    if not isinstance(value, cls):
        raise TypeError(f"section {kind!r} is a {type(value).__name__}, not {cls.__name__}")
    return value


__all__ = ["ModelSpec", "import_object", "section_of"]
