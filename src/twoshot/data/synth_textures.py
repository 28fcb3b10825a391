"""Texture sources for generated videos: scikit-image's bundled photos, else procedural noise.

Object and background appearance comes from *texture families*. A family is one source
(a sample photo shipped inside scikit-image, or a procedural noise recipe with fixed
colours); different crops of the same family look alike, which is what distractors use.

The photos are read straight from the files inside the installed ``skimage/data`` folder,
never through ``skimage.data.<name>()``: those functions may try to download a missing file,
and nothing may be downloaded here. A photo that is not there is skipped; with no photo at
all every family is procedural, so generation never depends on what is installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Photos that scikit-image ships in its wheel (checked for 0.21 - 0.26). Gray ones are
# tinted when used, so brick / grass / gravel become coloured surfaces.
PHOTO_FILES: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "moon.png",
    "cell.png",
)

# Photos are shrunk to this longest side once: crops for 96-480 px frames need no more, and
# it keeps the cache small.
_MAX_SIDE = 512


def _skimage_data_dir() -> Path | None:
    """Folder of scikit-image's bundled sample files, or None if scikit-image is absent."""
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data"


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray, bool], ...]:
    """Load the bundled photos that exist locally.

    Returns (name, image float32 [H, W, 3] in 0..1, is_gray) per photo, in PHOTO_FILES order,
    so the set (and therefore generation) is the same on every call of one installation.
    """
    folder = _skimage_data_dir()
    if folder is None or not folder.is_dir():
        return ()
    photos = []
    for name in PHOTO_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            with Image.open(path) as image:
                gray = image.mode in ("L", "I", "I;16", "1")
                rgb: np.ndarray = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError):
            continue  # a damaged sample file only costs us one texture family
        scale = _MAX_SIDE / max(rgb.shape[:2])
        if scale < 1.0:
            rgb = cv2.resize(
                rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA
            )
        photo = rgb.astype(np.float32) / 255.0
        photo.setflags(write=False)  # shared through the cache: nobody may modify it
        photos.append((name, photo, gray))
    return tuple(photos)


@dataclass(frozen=True)
class TextureFamily:
    """A recipe for look-alike textures.

    pattern: "photo" (crops of ``photos()[source]``) or "noise" / "stripes" / "spots" (procedural).
    source: photo index for "photo".
    colors: 3 RGB colours (0..1) for procedural patterns, and the tint of a gray photo.
    detail: spatial frequency of procedural textures (cycles per patch, roughly).
    """

    pattern: str
    source: int
    colors: tuple[tuple[float, float, float], ...]
    detail: float


def _random_colors(rng: np.random.Generator, count: int) -> tuple[tuple[float, float, float], ...]:
    """Random saturated-ish colours, built in HSV so they are not all muddy grays."""
    hue = rng.uniform(0, 180)
    hsv = np.zeros((1, count, 3), np.uint8)
    for i in range(count):
        # Neighbouring hues make a family coherent; the odd jump adds contrast.
        hsv[0, i] = ((hue + rng.normal(0, 25)) % 180, rng.uniform(70, 230), rng.uniform(60, 245))
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255.0
    return tuple((float(c[0]), float(c[1]), float(c[2])) for c in rgb)


def random_family(rng: np.random.Generator, photo_share: float, use_photos: bool = True) -> TextureFamily:
    """Draw a texture family: a bundled photo with probability ``photo_share``, else procedural."""
    photos = load_photos() if use_photos else ()
    colors = _random_colors(rng, 3)
    if photos and rng.random() < photo_share:
        return TextureFamily("photo", int(rng.integers(len(photos))), colors, 0.0)
    pattern = ("noise", "stripes", "spots")[int(rng.integers(3))]
    return TextureFamily(pattern, -1, colors, float(rng.uniform(2.0, 6.0)))


def _fractal_noise(rng: np.random.Generator, size: int, detail: float) -> np.ndarray:
    """Smooth multi-octave value noise in 0..1, float32 [size, size]."""
    total = np.zeros((size, size), np.float32)
    weight_sum = 0.0
    cells = max(2.0, detail)
    for octave in range(4):
        n = int(np.ceil(cells * 2**octave)) + 2
        grid = rng.random((n, n), dtype=np.float32)
        weight = 0.5**octave
        total += weight * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        weight_sum += weight
    total /= weight_sum
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _colorize(value: np.ndarray, colors: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Map a 0..1 field through a piecewise-linear gradient of ``colors`` -> [H, W, 3].

    Uses a 256-entry lookup table: 8-bit steps are invisible after JPEG, and it is several
    times faster than interpolating every pixel.
    """
    palette = np.asarray(colors, np.float32)
    position = np.linspace(0.0, len(palette) - 1, 256, dtype=np.float32)
    low = np.minimum(position.astype(np.int32), len(palette) - 2)
    frac = (position - low.astype(np.float32))[:, None]
    lut = palette[low] * (1.0 - frac) + palette[low + 1] * frac
    index = (np.clip(value, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return lut[index]


def _procedural_patch(family: TextureFamily, rng: np.random.Generator, size: int) -> np.ndarray:
    """A fresh procedural texture of the family (same recipe and colours, new randomness)."""
    noise = _fractal_noise(rng, size, family.detail)
    if family.pattern == "stripes":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * family.detail * (xx * np.cos(theta) + yy * np.sin(theta)) + 4.0 * noise)
        value = 0.5 + 0.5 * wave
    elif family.pattern == "spots":
        fine = _fractal_noise(rng, size, family.detail * 2.5)
        value = 0.6 * noise + 0.4 * (fine > 0.6)
    else:
        value = noise
    return _colorize(value, family.colors)


def texture_patch(
    family: TextureFamily, rng: np.random.Generator, size: int, crop: tuple[float, float] = (0.25, 0.6)
) -> np.ndarray:
    """A square texture of the family, float32 [size, size, 3] in 0..1.

    For a photo: a random square crop whose side is ``crop`` (fraction of the photo's short
    side), randomly flipped / turned, resized to ``size``; gray photos are tinted with the
    family's colours. Procedural patterns draw new noise with the family's recipe.
    """
    size = int(max(4, size))
    if family.pattern != "photo":
        return _procedural_patch(family, rng, size).astype(np.float32)
    photos = load_photos()
    _, photo, gray = photos[family.source % len(photos)]
    h, w = photo.shape[:2]
    side = int(max(8, rng.uniform(*crop) * min(h, w)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    patch = photo[y0 : y0 + side, x0 : x0 + side]
    # INTER_AREA when shrinking: a sharp photo sampled sparsely would shimmer frame to frame.
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (size, size), interpolation=interp)
    patch = np.rot90(patch, int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = np.ascontiguousarray(patch)
    if gray:
        # Gray photo -> two-colour tint through its luminance, keeping its structure.
        r, g, b = (min(1.0, c * 1.3 + 0.1) for c in family.colors[1])
        patch = _colorize(patch[..., 0], (*family.colors[:2], (r, g, b)))
    return patch.astype(np.float32)
