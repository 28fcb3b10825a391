"""Training augmentation for 3-frame clips (STCN's reference transforms), with plain OpenCV.

Library choice: ``benchmarks/augment_throughput.py`` runs the same clip pipeline with OpenCV
(this module), albumentations and kornia on the same frames, one process, one thread.
OpenCV was fastest at both crop sizes (217 / 47 clips/s at 96 / 384 px against
albumentations' 167 / 41 and kornia's 16 / 7; docs/training-data.md), and it is already a
dependency, so nothing is added to pyproject.toml. It also lets every random draw come from
one explicit ``numpy.random.Generator`` (a clip is a pure function of its seed), whereas
albumentations and kornia keep their own or torch's global random state.

Video clips (:class:`ClipAugment`, DESIGN.md §3), in the reference order:

- shared by the clip: horizontal flip (p 0.5), random resized crop (area 0.36-1, aspect
  3/4-4/3) to ``crop_size`` (bicubic for images, nearest for masks; area averaging when it
  shrinks a lot, so small crops from 480p frames do not alias), colour jitter (brightness
  0.1, contrast 0.03, saturation 0.03), grayscale with p 0.05;
- per frame: affine (rotation +-15 deg, x-shear +-10 deg about the centre; bicubic with the
  ImageNet mean as fill for images, nearest with 0 for masks) and colour jitter 0.01.

Static images (STCN stage 0) are augmented in :mod:`twoshot.data.static_augment` with the
helpers defined here.

Images stay uint8 RGB throughout, as in the reference (PIL): in as [H, W, 3], out as
[T, S, S, 3]; :func:`to_normalized_tensor` makes the network input. The geometric
parameters of a frame are applied to its image and its mask alike.
:meth:`ClipAugment.augment_clip` also reports each frame's geometry as one 3x3 matrix
(original-frame pixel -> crop pixel) and :func:`labels_to_frame` inverts it, so that phase 2
can write refined labels back to the pseudo-label bank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

FILL_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104): reads as ~0


@dataclass(frozen=True)
class Jitter:
    """Colour jitter strengths (torchvision ColorJitter semantics): factors are drawn from
    ``[max(0, 1-v), 1+v]`` for brightness, contrast, saturation and ``[-hue, hue]`` for hue
    (a fraction of the colour wheel); the four are applied in a random order."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass(frozen=True)
class JitterDraw:
    """One drawn jitter: the factors and the order (a permutation of 0..3)."""

    order: tuple[int, ...]
    brightness: float
    contrast: float
    saturation: float
    hue: float


def draw_jitter(rng: np.random.Generator, jitter: Jitter) -> JitterDraw:
    """Draw factors for ``jitter``: always 5 draws (order + 4 factors), so the random stream
    does not depend on which strengths are zero."""
    order = tuple(int(i) for i in rng.permutation(4))
    factors = [
        float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s))
        for s in (jitter.brightness, jitter.contrast, jitter.saturation)
    ]
    hue = float(rng.uniform(-jitter.hue, jitter.hue))
    return JitterDraw(order, factors[0], factors[1], factors[2], hue)


def _identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.float32)


def _lut(values: np.ndarray) -> np.ndarray:
    """float values per input level -> a uint8 lookup table (rounded, clipped)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> its luma (ITU-R 601, as PIL's "L") repeated on 3 channels,
    RandomGrayscale's output."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def apply_jitter(image: np.ndarray, draw: JitterDraw) -> np.ndarray:
    """Apply a drawn colour jitter to uint8 [H, W, 3] RGB; returns uint8 [H, W, 3].

    The PIL/torchvision operations, on uint8 like the reference: brightness scales;
    contrast blends with the mean luma; saturation blends with the per-pixel luma; hue
    rotates the hue channel. Each step rounds and clips to [0, 255]. Brightness and
    contrast are lookup tables, saturation one weighted sum: cheap enough per frame.
    """
    for op in draw.order:
        if op == 0 and draw.brightness != 1.0:
            image = cv2.LUT(image, _lut(_identity_lut() * draw.brightness))
        elif op == 1 and draw.contrast != 1.0:
            mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
            mean = float(int(mean + 0.5))  # PIL rounds the mean luma
            image = cv2.LUT(image, _lut(mean + draw.contrast * (_identity_lut() - mean)))
        elif op == 2 and draw.saturation != 1.0:
            image = cv2.addWeighted(image, draw.saturation, to_grayscale(image), 1.0 - draw.saturation, 0.0)
        elif op == 3 and draw.hue != 0.0:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)  # H in 0..255 as PIL's
            shift = int(round(draw.hue * 255))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return image


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.36, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, crop_h, crop_w) in pixels.

    Up to 10 tries for a box of area ``scale`` x image area and aspect ``ratio`` (log-uniform)
    that fits; otherwise a centred crop with the aspect clamped into ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_ratio[0], log_ratio[1])))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(height - crop_h + 1))
            left = int(rng.integers(width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def affine_matrix(
    angle: float,
    shear_x: float,
    shear_y: float = 0.0,
    scale: float = 1.0,
    center: tuple[float, float] = (0.0, 0.0),
    translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Forward 2x3 matrix (source -> destination pixel, OpenCV convention) of torchvision's
    RandomAffine: rotation-scale-shear ``R(a) S(s) SHy(sy) SHx(sx)`` about ``center``, then
    ``translate``. Angles in degrees."""
    a, sx, sy = math.radians(angle), math.radians(shear_x), math.radians(shear_y)
    m00 = math.cos(a - sy) / math.cos(sy)
    m01 = -math.cos(a - sy) * math.tan(sx) / math.cos(sy) - math.sin(a)
    m10 = math.sin(a - sy) / math.cos(sy)
    m11 = -math.sin(a - sy) * math.tan(sx) / math.cos(sy) + math.cos(a)
    lin = scale * np.array([[m00, m01], [m10, m11]], dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)
    offset = c - lin @ c + np.asarray(translate, dtype=np.float64)
    return np.concatenate([lin, offset[:, None]], axis=1)


def resize_image(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Resize with half-pixel-centre conventions for image and mask alike (so they stay
    aligned): INTER_NEAREST_EXACT for labels; area averaging when shrinking by more than
    1.5x (antialiasing, as PIL's bicubic does), bicubic otherwise."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if nearest:
        flag = cv2.INTER_NEAREST_EXACT
    elif image.shape[1] > 1.5 * width or image.shape[0] > 1.5 * height:
        flag = cv2.INTER_AREA
    else:
        flag = cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=flag)


def crop_resize_matrix(crop_box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """3x3 map from original-frame pixels to pixels of the crop box resized to size x size.

    crop_box: (top, left, crop_h, crop_w). Pixel centres as in :func:`_resize` (half-pixel
    convention): ``x' = (x - left + 0.5) * size / crop_w - 0.5``, likewise for y. float64.
    """
    top, left, crop_h, crop_w = crop_box
    sx, sy = size / crop_w, size / crop_h
    return np.array(
        [[sx, 0.0, (0.5 - left) * sx - 0.5], [0.0, sy, (0.5 - top) * sy - 0.5], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def labels_to_frame(
    labels: np.ndarray,
    matrix: np.ndarray,
    crop_box: tuple[int, int, int, int],
    frame_size: tuple[int, int],
    fill: int = 255,
) -> np.ndarray:
    """Warp a crop's label map back onto its original frame (inverse of ClipAugment's geometry).

    labels: uint8 [S, S] in crop pixels; matrix: the frame's 3x3 original -> crop map
    (:attr:`AugmentedClip.matrices`); crop_box: (top, left, crop_h, crop_w); frame_size: (H, W).
    Each frame pixel inside the crop box takes the label of the crop pixel nearest to its image
    under ``matrix``; pixels outside the box, or whose image falls outside the crop, get
    ``fill``. Returns uint8 [H, W].
    """
    height, width = frame_size
    top, left, crop_h, crop_w = crop_box
    out = np.full((height, width), fill, dtype=np.uint8)
    # Only the box is warped: frame pixels outside it never reached the crop (the crop
    # pixels they would map to show the warp's fill, not the frame).
    from_box = np.array([[1.0, 0.0, left], [0.0, 1.0, top], [0.0, 0.0, 1.0]])
    box_to_crop = (np.asarray(matrix, dtype=np.float64) @ from_box)[:2]
    # WARP_INVERSE_MAP: dst(p) = src(box_to_crop @ p), i.e. nearest sampling of the crop at
    # each box pixel's image, which is what write-back needs.
    out[top : top + crop_h, left : left + crop_w] = cv2.warpAffine(
        np.ascontiguousarray(labels, dtype=np.uint8),
        box_to_crop,
        (crop_w, crop_h),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    return out


class AugmentedClip(NamedTuple):
    """What :meth:`ClipAugment.augment_clip` returns.

    pixels: uint8 [T, S, S, 3]; masks: T uint8 [S, S] or None; matrices: float64 [T, 3, 3],
    each frame's map from original-frame pixels to crop pixels (crop, resize, flip, affine);
    crop_box: (top, left, crop_h, crop_w) of the clip's crop in the original frame.
    """

    pixels: np.ndarray
    masks: list[np.ndarray | None]
    matrices: np.ndarray
    crop_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class ClipAugment:
    """The reference VOS clip augmentation (DESIGN.md §3); call it to augment one clip.

    Defaults are STCN's; tests switch the colour parts off with ``dataclasses.replace``.
    """

    crop_size: int
    hflip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.36, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    clip_jitter: Jitter = Jitter(0.1, 0.03, 0.03, 0.0)
    grayscale_p: float = 0.05
    rotate: float = 15.0
    shear: float = 10.0
    frame_jitter: Jitter = Jitter(0.01, 0.01, 0.01, 0.0)

    def __call__(
        self, rng: np.random.Generator, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Augment a clip.

        images: T uint8 RGB frames [H, W, 3] of one video (same size); masks: T uint8 label
        maps [H, W] or None for a frame without labels (its geometry is drawn all the same,
        so the random stream does not depend on which frames are labeled).
        Returns (uint8 [T, S, S, 3], list of T uint8 [S, S] or None); see
        :meth:`augment_clip` for the same with each frame's geometry.
        """
        clip = self.augment_clip(rng, images, masks)
        return clip.pixels, clip.masks

    def augment_clip(
        self, rng: np.random.Generator, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]
    ) -> AugmentedClip:
        """Augment a clip (same arguments and random draws as :meth:`__call__`) and also
        report its geometry: an :class:`AugmentedClip` whose ``matrices`` [T, 3, 3] map
        original-frame pixels to crop pixels (invert with :func:`labels_to_frame`)."""
        size = self.crop_size
        height, width = images[0].shape[:2]
        # Shared by the clip: one crop box, one flip, one colour draw.
        top, left, crop_h, crop_w = random_resized_crop_box(
            rng, height, width, self.crop_scale, self.crop_ratio
        )
        flip = bool(rng.random() < self.hflip_p)
        shared = draw_jitter(rng, self.clip_jitter)
        gray = bool(rng.random() < self.grayscale_p)
        center = ((size - 1) / 2.0, (size - 1) / 2.0)
        # The flip is folded into each frame's warp (x -> S-1-x first): no extra copy.
        mirror = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        resize = crop_resize_matrix((top, left, crop_h, crop_w), size)
        out_images = np.empty((len(images), size, size, 3), dtype=np.uint8)
        out_masks: list[np.ndarray | None] = []
        matrices = np.empty((len(images), 3, 3), dtype=np.float64)
        for t, (image, mask) in enumerate(zip(images, masks)):
            if image.shape[:2] != (height, width):
                raise ValueError(f"frame {t} is {image.shape[:2]}, frame 0 is {(height, width)}")
            # Per frame: affine and a small jitter, drawn whether or not the frame has a mask.
            matrix = affine_matrix(
                float(rng.uniform(-self.rotate, self.rotate)),
                float(rng.uniform(-self.shear, self.shear)),
                center=center,
            )
            if flip:
                matrix = matrix @ mirror
            own = draw_jitter(rng, self.frame_jitter)
            matrices[t, :2] = matrix @ resize  # original frame -> crop, one 3x3 per frame
            matrices[t, 2] = (0.0, 0.0, 1.0)

            crop = image[top : top + crop_h, left : left + crop_w]
            crop = resize_image(crop, size, size)
            pixels = apply_jitter(np.ascontiguousarray(crop), shared)
            if gray:
                pixels = to_grayscale(pixels)
            pixels = cv2.warpAffine(
                pixels,
                matrix,
                (size, size),
                flags=cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=FILL_RGB,
            )
            out_images[t] = apply_jitter(pixels, own)

            if mask is None:
                out_masks.append(None)
                continue
            if mask.shape[:2] != (height, width):
                raise ValueError(f"mask {t} is {mask.shape[:2]}, its frame is {(height, width)}")
            labels = resize_image(mask[top : top + crop_h, left : left + crop_w], size, size, nearest=True)
            labels = cv2.warpAffine(
                np.ascontiguousarray(labels),
                matrix,
                (size, size),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            out_masks.append(labels)
        return AugmentedClip(out_images, out_masks, matrices, (top, left, crop_h, crop_w))


def to_normalized_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] RGB -> ImageNet-normalised float32 tensor [T, 3, H, W]
    (``(x/255 - mean) / std``)."""
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    scale = (1.0 / (255.0 * std))[:, None, None]
    offset = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / std)[:, None, None]
    # Transpose the uint8 array (1 byte per value), then scale in place: ~15x faster than
    # scaling first and copying floats through a strided transpose.
    planar = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
    planar *= scale
    planar += offset
    return torch.from_numpy(planar)
