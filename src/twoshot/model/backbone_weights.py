"""ImageNet initialisation of a model's encoders from torchvision ResNet files on disk.

STCN starts its key encoder from an ImageNet ResNet-50 and its value encoder from a
ResNet-18; Cutie its pixel encoder from a ResNet-50 (base) or -18 (small) and its mask
encoder from a ResNet-18. torchvision cannot be a dependency (it does not import with every
torch build), so the project's ResNets use torchvision's parameter names and this module
maps a torchvision state-dict file onto them: ``layer1`` becomes ``res2`` in encoders that
name it so, the extra mask input channels are added, and torchvision's missing conv biases
keep their initial values. A model names its ImageNet encoders with an
``imagenet_encoders()`` method (name -> module); STCN's are its key and value encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from twoshot.errors import UserError


def load_backbone_weights(model: nn.Module, spec: str) -> None:
    """Initialise the model's ImageNet encoders from torchvision ResNet files.

    spec: one ``.pth`` file, a comma-separated pair, or a folder holding them. Each file is
    loaded into the first encoder not yet loaded whose backbone it fits (STCN: ResNet-50 ->
    key, ResNet-18 -> value); a model that names its encoders (Cutie) then also fills any
    encoder left over from a file that fits it (Cutie-small: one ResNet-18 -> pixel and mask
    encoders). The extra mask channels are orthogonally initialised and torchvision's
    missing conv biases keep their initial values, as in STCN and Cutie.
    """
    paths = _backbone_files(spec)
    targets = _imagenet_encoders(model)
    used: set[str] = set()
    sources = []
    for path in paths:
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise UserError(f"{path}: not a PyTorch checkpoint ({exc})") from exc
        if not isinstance(source, Mapping):
            raise UserError(f"{path}: not a state dict")
        source = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in source.items()}
        sources.append(source)
        for name, encoder in targets.items():
            if name not in used and _load_trunk(encoder, source):
                used.add(name)
                break
        else:
            names = list(targets)
            which = (
                f"neither the {names[0]} nor the {names[1]}"
                if len(names) == 2
                else f"none of the {', '.join(names)}"
            )
            raise UserError(
                f"{path}: fits {which} of this model (is it a torchvision ResNet of the right depth?)"
            )
    if callable(getattr(model, "imagenet_encoders", None)):
        # A model that names its encoders may share one file between them (Cutie-small's
        # pixel and mask encoders are both ResNet-18s).
        for name, encoder in targets.items():
            if name not in used and any(_load_trunk(encoder, source) for source in sources):
                used.add(name)


def _load_trunk(encoder: nn.Module, source: Mapping[str, torch.Tensor]) -> bool:
    """Load a torchvision ResNet state dict into ``encoder``'s trunk if it fits; whether it did."""
    renamed = {
        ("res2" + k[len("layer1") :] if hasattr(encoder, "res2") and k.startswith("layer1.") else k): v
        for k, v in source.items()
    }
    return _load_matching(encoder, renamed) is not None


def _imagenet_encoders(model: nn.Module) -> dict[str, nn.Module]:
    """The model's encoders that start from ImageNet ResNets, by name (STCN's by default)."""
    named = getattr(model, "imagenet_encoders", None)
    if callable(named):
        encoders: dict[str, nn.Module] = named()
        return encoders
    return {
        "key encoder": cast(nn.Module, model.key_encoder),
        "value encoder": cast(nn.Module, model.value_encoder),
    }


_TRUNK = frozenset({"conv1", "bn1", "res2", "layer1", "layer2", "layer3"})


def _load_matching(encoder: nn.Module, source: Mapping[str, torch.Tensor]) -> int | None:
    own = encoder.state_dict()
    # Only the ResNet trunk: an encoder's other parts (STCN's fuser, Cutie's fuser and sensory
    # updater) are not in a torchvision file.
    names = [
        k
        for k in own
        if k.split(".")[0] in _TRUNK
        and not k.endswith("num_batches_tracked")
        and not (k.endswith(".bias") and "bn" not in k and "downsample.1" not in k)
    ]
    if any(k not in source for k in names):
        return None
    new_state = {}
    for k in names:
        value = source[k]
        if value.shape != own[k].shape:
            if k == "conv1.weight" and value.shape[1] < own[k].shape[1] and value.shape[0] == own[k].shape[0]:
                pad = torch.zeros((value.shape[0], own[k].shape[1] - value.shape[1], *value.shape[2:]))
                nn.init.orthogonal_(pad)
                value = torch.cat([value, pad], dim=1)
            else:
                return None
        new_state[k] = value
    encoder.load_state_dict(new_state, strict=False)
    return len(new_state)


def _backbone_files(spec: str) -> list[Path]:
    if "," in spec:
        paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    elif Path(spec).is_dir():
        paths = sorted(Path(spec).glob("resnet*.pth")) + sorted(Path(spec).glob("resnet*.pt"))
        if not paths:
            raise UserError(f"{spec}: no resnet*.pth files in this folder")
    else:
        paths = [Path(spec)]
    for path in paths:
        if not path.is_file():
            raise UserError(f"model.backbone_weights: {path} not found")
    return paths
