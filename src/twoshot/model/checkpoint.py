"""Checkpoint I/O in the published models' format: a raw ``state_dict`` written with ``torch.save``.

Accepted on load: a raw state dict, one saved from ``DataParallel`` / DDP (``module.``
prefixes), a training checkpoint ``{it, network, optimizer, scheduler}`` and a published
file with the state dict under ``"model"`` (SAM 2's). Which model
the weights are is told by their parameter names (:func:`detect_kind`, from each registered
model's ``checkpoint_prefixes``); the model's ``upgrade_state`` then expands older forms (an
STCN stage-0 checkpoint's 4-channel value encoder, a single-object Cutie checkpoint) as the
model's own loader does.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twoshot.config import Config, ModelConfig, config_from_dict, load_config, preset_names
from twoshot.errors import UserError
from twoshot.fsutil import save_torch
from twoshot.model.interface import VOSModel
from twoshot.model.registry import build_skeleton, model_class, model_kinds, spec_for, specs
from twoshot.model.spec import import_object


def read_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """Load the network weights from any accepted checkpoint form.

    Returns a state dict with the model's plain names (no ``module.`` prefix), upgraded by its
    model's ``upgrade_state`` (older checkpoint forms expanded to the current network).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (KeyError, UnpicklingError ...) on junk
        raise UserError(
            f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from exc
    for wrapper in ("network", "model"):  # a training checkpoint; a published SAM 2 file
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"{path}: not a state dict of tensors (nor a training checkpoint with a 'network' "
            "entry, nor a published file with a 'model' entry)"
        )
    state = OrderedDict((k[len("module.") :] if k.startswith("module.") else k, v) for k, v in obj.items())
    kind = detect_kind(state)
    upgrade = spec_for(kind).upgrade_state if kind is not None else None
    if upgrade is not None:
        state = OrderedDict(import_object(upgrade)(state))
    return state


def detect_kind(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered architecture whose ``checkpoint_prefixes`` ``state`` has, or None."""
    for spec in specs():
        if all(any(k.startswith(p) for k in state) for p in spec.checkpoint_prefixes):
            return spec.kind
    return None


def check_kind(state: Mapping[str, torch.Tensor], kind: str, source: str) -> None:
    """Raise UserError if ``state`` is not a checkpoint of architecture ``kind``.

    The message names ``source``, the architecture the weights look like (if any) and the
    first names the expected architecture lacks.
    """
    found = detect_kind(state)
    if found == kind:
        return
    names = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
    looks = (
        f"the weights look like a {found} checkpoint; use --model {found}"
        if found
        else f"the weights look like no model ({', '.join(model_kinds())}): no parameters "
        f"named {' / '.join(spec_for(kind).checkpoint_prefixes)}*"
    )
    raise UserError(f"{source}: not a {kind} checkpoint: {looks} (first keys: {names})")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise UserError if ``state`` does not fit ``model`` exactly (names and shapes).

    The message names ``source``, the first offending keys with their count, and a preset
    whose sizes would fit, if there is one.
    """
    kind = getattr(model, "kind", None)
    if kind is not None:
        check_kind(state, kind, source)
    problems = _mismatches(model.state_dict(), state)
    if not problems:
        return
    lines = [f"{source}: checkpoint does not match the {kind or 'model'} model"]
    for label, items in problems.items():
        if items:
            shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
            lines.append(f"  {len(items)} {label}: {shown}")
    fitting = matching_preset(state)
    if fitting:
        lines.append(f"  the weights fit the '{fitting}' preset: use --preset {fitting}")
    raise UserError("\n".join(lines))


def matching_preset(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of a shipped preset whose model has exactly these names and shapes, or None."""
    kind = detect_kind(state)
    for name in preset_names():
        config = load_config(name).model
        if config.kind != kind:
            continue
        candidate = build_skeleton(config)
        if not any(_mismatches(candidate.state_dict(), state).values()):
            return name
    return None


def _mismatches(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    result = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": shapes}
    return result if any(result.values()) else {}


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a checkpoint file into ``model`` (strict: every name and shape must match).

    Returns the same model. Raises UserError naming the file and the mismatching keys.
    """
    state = read_state_dict(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model


def saved_config(path: str | os.PathLike[str]) -> Config | None:
    """The run configuration ``twoshot train`` saved next to the weights ``path``, or None.

    ``twoshot train`` writes ``config.json`` beside ``final.pth`` and its snapshots (the run
    configuration under ``config``; a pipeline's own ``config.json`` has the sections at the
    top). It is the only record of settings the weights cannot show
    (``model.output_stride``). A ``config.json`` there with no ``model`` section is not a
    twoshot configuration and is ignored; one that has it but does not load raises UserError
    naming the file.
    """
    sidecar = Path(path).parent / "config.json"
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return None
    try:
        return config_from_dict(data, str(sidecar))
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(str(sidecar)) else f"{sidecar}: {message}") from None


def model_config_for(path: str | os.PathLike[str], preset: str | None = None) -> Config | None:
    """The configuration to load weights ``path`` with: ``preset``'s if given, else the one
    saved beside the weights (:func:`saved_config`), else None (guess from the weights)."""
    return load_config(preset) if preset is not None else saved_config(path)


def load_model(
    path: str | os.PathLike[str], config: ModelConfig | None = None, kind: str | None = None
) -> VOSModel:
    """Build the model for ``config`` and load ``path``.

    With ``config`` None: the model section saved beside the weights by ``twoshot train``
    (:func:`saved_config`), else the shipped preset the weights fit. kind: the architecture
    the caller expects (``--model``); None = whatever the weights are. UserError naming the
    file when the weights are of another architecture, of neither, or do not fit ``config``.
    """
    state = read_state_dict(path)
    if kind is not None:
        check_kind(state, kind, str(path))
    if config is None:
        saved = saved_config(path)
        config = saved.model if saved is not None else None
    if config is None:
        found = detect_kind(state)
        if found is None:
            check_kind(state, kind or "stcn", str(path))
        preset = matching_preset(state)
        if preset is None:
            fitting = [name for name in preset_names() if load_config(name).model.kind == found]
            raise UserError(
                f"{path}: the {found} weights fit no shipped preset "
                f"({', '.join(fitting)}); pass the model configuration that produced them"
            )
        config = load_config(preset).model
    model = model_class(config.kind)(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s raw state dict (the published checkpoints' format) to ``path`` atomically."""
    module: Any = getattr(model, "module", model)
    save_torch(path, module.state_dict())
