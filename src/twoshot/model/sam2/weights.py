"""SAM 2 checkpoints: telling a SAM 2 state dict and its size from its keys, and loading one.

The published ``sam2.1_hiera_{tiny,small,base_plus,large}.pt`` files hold the state dict under
``"model"``; twoshot's own saved weights are the bare state dict. Both load unchanged. The
size is read from the trunk's shapes (patch embedding width, blocks per stage, background
positional grid); the number of attention heads, which no shape shows, comes from the
matching preset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from twoshot.errors import UserError
from twoshot.model.sam2.network import Sam2
from twoshot.model.sam2.sizes import SIZES, Sam2Size, size_named

SAM2_KEYS = (
    "image_encoder.trunk.patch_embed.proj.weight",
    "memory_attention.norm.weight",
    "sam_mask_decoder.iou_token.weight",
    "maskmem_tpos_enc",
)
"""Names every SAM 2 state dict has and no other model's does."""

_BLOCK = re.compile(r"image_encoder\.trunk\.blocks\.(\d+)\.")


def is_sam2_state(state: Mapping[str, object]) -> bool:
    """Whether ``state`` (a state dict) has SAM 2's parameter names."""
    return all(k in state for k in SAM2_KEYS)


def trunk_signature(state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...], tuple[int, int]]:
    """(embed_dim, blocks per stage, positional grid) of a SAM 2 state dict's Hiera trunk;
    a stage starts at each block with a widening projection (``blocks.i.proj``)."""
    embed_dim = int(state["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.match(k))), default=-1)
    starts = [0] + [i for i in range(depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in state]
    stages = tuple(b - a for a, b in zip(starts, starts[1:] + [depth]))
    grid = state["image_encoder.trunk.pos_embed"].shape[-2:]
    return embed_dim, stages, (int(grid[0]), int(grid[1]))


def detect_size(state: Mapping[str, torch.Tensor]) -> str | None:
    """The size (a key of :data:`~twoshot.model.sam2.sizes.SIZES`) whose trunk
    ``state`` has, or None (not SAM 2, or a size twoshot has no preset for)."""
    if not is_sam2_state(state) or "image_encoder.trunk.pos_embed" not in state:
        return None
    signature = trunk_signature(state)
    for name, size in SIZES.items():
        if (size.embed_dim, size.stages, size.pos_embed_size) == signature:
            return name
    return None


def read_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file: under ``"model"`` (published files) or bare.
    UserError naming the file if it is missing or not a checkpoint of tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on junk
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise UserError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {first})") from exc
    for wrapper in ("model", "network"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors (nor a file with one under 'model')")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def check_sam2_state(state: Mapping[str, torch.Tensor], source: str, size: str | None = None) -> str:
    """The preset of a SAM 2 state dict; UserError naming ``source`` when it is another model's
    (STCN, Cutie, ...), a SAM 2 of no known size, or not of ``size`` when one is asked for."""
    if not is_sam2_state(state):
        from twoshot.model.checkpoint import detect_kind

        found = detect_kind(state)
        names = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
        looks = f"the weights look like a {found} checkpoint" if found else "no SAM 2 parameter names"
        raise UserError(f"{source}: not a SAM 2 checkpoint: {looks} (first keys: {names})")
    found_size = detect_size(state)
    if found_size is None:
        embed_dim, stages, grid = trunk_signature(state)
        raise UserError(
            f"{source}: a SAM 2 checkpoint of no known size (trunk width {embed_dim}, blocks per "
            f"stage {list(stages)}, positional grid {grid[0]}x{grid[1]}); sizes: {', '.join(SIZES)}"
        )
    if size is not None and size_named(size).name != found_size:
        raise UserError(f"{source}: a SAM 2.1 {found_size} checkpoint, not {size_named(size).name}")
    return found_size


def load_sam2(path: str | os.PathLike[str], size: str | None = None, image_size: int | None = None) -> Sam2:
    """A :class:`Sam2` with the weights of checkpoint ``path`` (published or twoshot's own).

    size: refuse the file unless it is this preset; image_size: run at another square input
    than the preset's (the weights fit any multiple of 32). UserError naming the file for any
    checkpoint that is not a SAM 2 of a known size or does not fit exactly.
    """
    state = read_state(path)
    name = check_sam2_state(state, str(path), size)
    preset: Sam2Size = SIZES[name] if image_size is None else SIZES[name].with_image_size(image_size)
    model = Sam2(preset)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise UserError(f"{path}: does not fit SAM 2.1 {name} ({'; '.join(parts)})")
    model.load_state_dict(state)
    return model
