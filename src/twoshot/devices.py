"""Device selection shared by training, inference and the command line."""

from __future__ import annotations

import contextlib

import torch

from twoshot.errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' | 'cuda:N' (or a torch.device) to a torch.device.

    'auto' picks CUDA when available. Raises UserError for CUDA on a machine without it or
    for a name torch does not know.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:N)") from exc


AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(name: str, key: str = "inference.amp_dtype") -> torch.dtype:
    """The torch dtype of an AMP setting ``name`` (float16 | bfloat16); UserError naming ``key``."""
    if name not in AMP_DTYPES:
        raise UserError(f"config key '{key}': {name!r} is not one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def inference_autocast(
    amp: bool, dtype: torch.dtype, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on CUDA when ``amp``; a no-op otherwise (CPU inference runs fp32)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
