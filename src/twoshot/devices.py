"""Device selection shared by training, inference and the command line."""

from __future__ import annotations

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
