"""Static-image pretraining augmentation (STCN stage 0, :class:`StaticClipAugment`).

One image + binary mask become 3 frames by a shared scale (0.8-1.5) + flip, per-frame
affine (+-20 deg, scale 0.9-1.1, shear 10), resize of the shorter side to the crop, random
crop, colour jitter, and a thin-plate spline warp with p 0.33. The affines compose into one
warp per frame (one resampling). Shared helpers live in :mod:`twoshot.data.augment`.

Optionally (``translate``, not in STCN's recipe, off by default) each frame is also shifted
by whole pixels, so that the object moves between frames as in a video: an image no larger
than the crop gets no movement from the random crop, and a model that reads its memory at
the same place rather than by appearance is then as good as one that tracks
(docs/results.md, "Moving the object in static pretraining").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from twoshot.data.augment import (
    FILL_RGB,
    Jitter,
    affine_matrix,
    apply_jitter,
    draw_jitter,
    resize_image,
    to_grayscale,
)

SHIFT_TRIES = 10  # draws of a per-frame shift before keeping the frame where it is


def tps_maps(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_points: int = 12,
    scale: float = 0.02,
    grid_step: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Random thin-plate-spline warp as ``cv2.remap`` maps (float32 [H, W] each).

    ``num_points`` control points at random positions (coordinates normalised to [0, 1])
    move by N(0, scale); the spline through the moved points gives, for each output pixel,
    where to sample the input. The spline is evaluated on a grid ``grid_step`` times coarser
    and upsampled linearly (it is smooth; this is ~16x cheaper).
    """
    src = rng.random((num_points, 2))
    dst = src + rng.normal(scale=scale, size=src.shape)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(d2 > 0, d2 * np.log(np.maximum(d2, 1e-12)), 0.0)  # r^2 log r^2

    n = num_points
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel(dst, dst) + 1e-8 * np.eye(n)  # tiny ridge: well-posed for any points
    system[:n, n] = 1.0
    system[:n, n + 1 :] = dst
    system[n, :n] = 1.0
    system[n + 1 :, :n] = dst.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src
    coef = np.linalg.solve(system, rhs)

    gh, gw = max(2, -(-height // grid_step)), max(2, -(-width // grid_step))
    gy, gx = np.meshgrid(np.linspace(0, 1, gh), np.linspace(0, 1, gw), indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    mapped = kernel(grid, dst) @ coef[:n] + coef[n] + grid @ coef[n + 1 :]
    map_x = cv2.resize(
        (mapped[:, 0] * (width - 1)).reshape(gh, gw).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_LINEAR,
    )
    map_y = cv2.resize(
        (mapped[:, 1] * (height - 1)).reshape(gh, gw).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_LINEAR,
    )
    return map_x, map_y


@dataclass(frozen=True)
class StaticClipAugment:
    """STCN stage-0 augmentation: one image + binary mask -> a 3-frame pseudo video."""

    crop_size: int
    num_frames: int = 3
    shared_scale: tuple[float, float] = (0.8, 1.5)
    hflip_p: float = 0.5
    clip_jitter: Jitter = Jitter(0.1, 0.05, 0.05, 0.05)
    grayscale_p: float = 0.05
    rotate: float = 20.0
    frame_scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0
    frame_jitter: Jitter = Jitter(0.1, 0.05, 0.05, 0.0)
    tps_p: float = 0.33
    tps_scale: float = 0.02
    # Per-frame shift in whole pixels, each axis uniform in +-round(translate x crop size);
    # redrawn (up to SHIFT_TRIES times, then none) while less than half the object stays.
    translate: float = 0.0

    def __call__(
        self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """image: uint8 [H, W, 3]; mask: bool or 0/1 [H, W].
        Returns (uint8 [T, S, S, 3], uint8 [T, S, S] with values 0/1)."""
        size = self.crop_size
        height, width = image.shape[:2]
        # Resizing the shorter side to the crop first (the reference resizes after its
        # affines) is the same geometry: the centred affines commute with an isotropic
        # resize, and one area-averaged shrink of a large image is cheaper and cleaner.
        factor = size / min(height, width)
        new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
        base = resize_image(image, new_w, new_h)
        base_mask = cv2.resize(
            mask.astype(np.float32),
            (new_w, new_h),
            interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR,
        )
        center = ((new_w - 1) / 2.0, (new_h - 1) / 2.0)

        # Shared by the clip (applied to the one source image, hence once).
        shared_scale = float(rng.uniform(*self.shared_scale))
        flip = bool(rng.random() < self.hflip_p)
        base = apply_jitter(base, draw_jitter(rng, self.clip_jitter))
        if rng.random() < self.grayscale_p:
            base = to_grayscale(base)
        shared = np.eye(3)
        shared[:2] = affine_matrix(0.0, 0.0, scale=shared_scale, center=center)
        if flip:
            mirror = np.array([[-1.0, 0.0, new_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            shared = mirror @ shared
        out_images = np.empty((self.num_frames, size, size, 3), dtype=np.uint8)
        out_masks = np.empty((self.num_frames, size, size), dtype=np.uint8)
        for t in range(self.num_frames):
            frame = np.eye(3)
            frame[:2] = affine_matrix(
                float(rng.uniform(-self.rotate, self.rotate)),
                float(rng.uniform(-self.shear, self.shear)),
                scale=float(rng.uniform(*self.frame_scale)),
                center=center,
            )
            top = int(rng.integers(new_h - size + 1))
            left = int(rng.integers(new_w - size + 1))
            crop = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
            matrix = (crop @ frame @ shared)[:2]
            pixels: np.ndarray = cv2.warpAffine(
                base,
                matrix,
                (size, size),
                flags=cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=FILL_RGB,
            )
            pixels = apply_jitter(pixels, draw_jitter(rng, self.frame_jitter))
            soft = cv2.warpAffine(
                base_mask,
                matrix,
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0.0,
            )
            if self.translate > 0:
                pixels, soft = self._shift(rng, pixels, soft)
            labels: np.ndarray = (soft > 0.5).astype(np.uint8)
            # TPS on a third of the frames, as the reference (it is the slow part).
            if rng.random() < self.tps_p:
                map_x, map_y = tps_maps(rng, size, size, scale=self.tps_scale)
                pixels = cv2.remap(
                    pixels,
                    map_x,
                    map_y,
                    cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=FILL_RGB,
                )
                labels = cv2.remap(
                    labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
                )
            out_images[t] = pixels
            out_masks[t] = labels
        return out_images, out_masks

    def _shift(
        self, rng: np.random.Generator, pixels: np.ndarray, soft: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frame ``pixels`` [S, S, 3] and its soft mask ``soft`` [S, S] moved by one shift
        of at most round(translate x crop) pixels per axis that keeps at least half of the mask
        in view; unmoved if none of SHIFT_TRIES draws does."""
        reach = round(self.translate * self.crop_size)
        area = float(soft.sum())
        for _ in range(SHIFT_TRIES):
            dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
            moved = shift_image(soft, dx, dy, 0.0)
            if float(moved.sum()) >= 0.5 * area:
                return shift_image(pixels, dx, dy, FILL_RGB), moved
        return pixels, soft


def shift_image(image: np.ndarray, dx: int, dy: int, fill: float | tuple[int, ...]) -> np.ndarray:
    """``image`` [H, W] or [H, W, C] moved by (dx, dy) whole pixels (right / down positive),
    uncovered pixels set to ``fill``; same shape and dtype."""
    height, width = image.shape[:2]
    out = np.empty_like(image)
    out[...] = fill
    if abs(dx) < width and abs(dy) < height:
        out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
            max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
        ]
    return out
