"""Reading and writing frames and indexed (palette) mask PNGs, the DAVIS way, with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from twoshot.errors import UserError
from twoshot.fsutil import atomic_path


def davis_palette() -> bytes:
    """Return the 768-byte DAVIS / PASCAL VOC colour palette (index 0 black, 1 red, 2 green ...)."""
    palette = bytearray(256 * 3)
    for index in range(256):
        r = g = b = 0
        label = index
        for bit in range(8):
            r |= ((label >> 0) & 1) << (7 - bit)
            g |= ((label >> 1) & 1) << (7 - bit)
            b |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette[3 * index : 3 * index + 3] = bytes((r, g, b))
    return bytes(palette)


DAVIS_PALETTE = davis_palette()


def read_frame(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB. Returns uint8 [H, W, 3]; raises UserError if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from exc


def read_mask(path: str | os.PathLike[str], *, allow_gray: bool = True) -> tuple[np.ndarray, bytes | None]:
    """Read an indexed mask PNG.

    Returns (labels uint8 [H, W], palette bytes or None). A palette ('P') image gives its
    indices; a single-channel ('L') image is accepted as labels when ``allow_gray``. An RGB
    mask is refused with a UserError: its colours are not object ids.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "P":
                palette = image.getpalette()
                labels = np.asarray(image, dtype=np.uint8).copy()
                return labels, bytes(palette) if palette is not None else None
            if mode in ("L", "I", "I;16") and allow_gray:
                labels = np.asarray(image)
                if labels.max(initial=0) > 255:
                    raise UserError(f"{path}: mask has labels above 255")
                return labels.astype(np.uint8), None
    except OSError as exc:
        raise UserError(f"{path}: cannot read mask ({exc})") from exc
    raise UserError(
        f"{path}: mask is a {mode} image; expected an indexed (palette) PNG whose pixel values are object ids"
    )


def write_mask(path: str | os.PathLike[str], labels: np.ndarray, palette: bytes | None = None) -> None:
    """Write labels (uint8 [H, W]) as an indexed PNG with ``palette`` (DAVIS's if None), atomically."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    image = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint8)), mode="P")
    image.putpalette(palette if palette is not None else DAVIS_PALETTE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_frame(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 [H, W, 3] image (JPEG or PNG by suffix), atomically."""
    image = Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), mode="RGB")
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, quality=quality) if fmt == "JPEG" else image.save(tmp, format=fmt)
