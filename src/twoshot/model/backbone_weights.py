"""ImageNet initialisation of STCN's encoders from torchvision ResNet files on disk.

STCN starts its key encoder from an ImageNet ResNet-50 and its value encoder from a
ResNet-18. torchvision cannot be a dependency (it does not import with every torch build),
so the project's ResNets use torchvision's parameter names and this module maps a
torchvision state-dict file onto them: ``layer1`` becomes the key encoder's ``res2``, the
value encoder's extra mask input channels are added, and torchvision's missing conv biases
keep their initial values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from twoshot.errors import UserError


def load_backbone_weights(model: nn.Module, spec: str) -> None:
    """Initialise the key and value encoders from torchvision ImageNet ResNet files.

    spec: one ``.pth`` file, a comma-separated pair, or a folder holding them. Each file is
    matched to the encoder whose backbone it fits (ResNet-50 -> key, ResNet-18 -> value).
    The value encoder's extra mask channels are orthogonally initialised and torchvision's
    missing conv biases keep their initial values, as in STCN.
    """
    paths = _backbone_files(spec)
    targets = {"key_encoder": model.key_encoder, "value_encoder": model.value_encoder}
    used: set[str] = set()
    for path in paths:
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise UserError(f"{path}: not a PyTorch checkpoint ({exc})") from exc
        if not isinstance(source, Mapping):
            raise UserError(f"{path}: not a state dict")
        source = {k[len("module."):] if k.startswith("module.") else k: v for k, v in source.items()}
        for name, encoder in targets.items():
            if name in used:
                continue
            renamed = {("res2" + k[len("layer1"):] if name == "key_encoder" and k.startswith("layer1.") else k): v
                       for k, v in source.items()}
            loaded = _load_matching(encoder, renamed)
            if loaded is not None:
                used.add(name)
                break
        else:
            raise UserError(f"{path}: fits neither the key encoder nor the value encoder "
                            f"of this model (is it a torchvision ResNet of the right depth?)")


def _load_matching(encoder: nn.Module, source: Mapping[str, torch.Tensor]) -> int | None:
    own = encoder.state_dict()
    names = [k for k in own if not k.startswith("fuser.") and not k.endswith("num_batches_tracked")
             and not (k.endswith(".bias") and "bn" not in k and "downsample.1" not in k)]
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
