"""From original frames to the network's input and back: resizing, padding, output masks.

STCN processes a video at a fixed shorter side (480 by default, DESIGN.md section 3), padded
to a multiple of 16, and maps its output probabilities back to the original size by
unpadding, bilinear upsampling and argmax. Everything here works on torch tensors on the
engine's device; sizes are (height, width).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from twoshot.model.preprocess import Padding, normalize_images, unpad


def processing_size(height: int, width: int, size: int, upscale: bool = True) -> tuple[int, int]:
    """(h, w) at which a (height, width) video is processed: shorter side ``size``.

    ``size == -1`` keeps the native size, and so does a shorter side of at most ``size`` when
    not ``upscale``. The longer side is ``int(size * long / short)`` (truncated), as the
    torchvision ``Resize(size)`` the reference test datasets use.
    """
    if size == -1:
        return height, width
    if size <= 0:
        raise ValueError(f"size must be positive or -1, got {size}")
    if not upscale and min(height, width) <= size:
        return height, width
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


@dataclass(frozen=True)
class Geometry:
    """Sizes of one video: original (height, width), processed (height, width), padding."""

    original: tuple[int, int]
    processed: tuple[int, int]
    padding: Padding

    @classmethod
    def for_frames(
        cls, height: int, width: int, size: int, upscale: bool = True, multiple: int = 16
    ) -> Geometry:
        """Geometry of a (height, width) video processed at shorter side ``size`` (-1 native;
        smaller videos keep their size unless ``upscale``), padded to a ``multiple`` of pixels
        (1: not padded)."""
        proc = processing_size(height, width, size, upscale)
        extra_h, extra_w = (-proc[0]) % multiple, (-proc[1]) % multiple
        pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
        return cls((height, width), proc, pad)

    @property
    def padded(self) -> tuple[int, int]:
        """(H, W) of the padded network input (multiples of 16)."""
        left, right, top, bottom = self.padding
        return self.processed[0] + top + bottom, self.processed[1] + left + right

    @property
    def resized(self) -> bool:
        """Whether processing resizes the frames."""
        return self.original != self.processed


def prepare_frames(
    frames: np.ndarray | torch.Tensor,
    geometry: Geometry,
    device: torch.device,
    normalize_first: bool = True,
) -> torch.Tensor:
    """Network input of RGB frames: normalised, resized (bilinear), padded to a multiple of 16.

    frames: uint8 [B, H, W, 3] at the original size. Returns float32 [B, 3, Hp, Wp] on
    ``device``. normalize_first: normalise, resize, then zero-pad, as STCN's test datasets;
    False: resize the [0, 1] frames, pad with black, then normalise, as Cutie's (whose network
    normalises its input). Resizing is antialiased, which only matters when shrinking.
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    x = x.to(device).permute(0, 3, 1, 2)
    x = normalize_images(x) if normalize_first else x.float() / 255.0
    if geometry.resized:
        x = F.interpolate(x, size=geometry.processed, mode="bilinear", align_corners=False, antialias=True)
    x = _padded(x, geometry.padding)
    if not normalize_first:
        x = normalize_images(x)
    # Channels-first memory, as STCN's ToTensor gives: the HWC permute would otherwise make
    # every feature map channels-last, and CPU kernels round differently on that layout.
    return x.contiguous()


def prepare_masks(
    labels: np.ndarray, object_ids: list[int], geometry: Geometry, device: torch.device
) -> torch.Tensor:
    """One-hot object masks at the network's resolution.

    labels: uint8 [H, W] object ids at the original size; object_ids: the K ids wanted.
    Returns float32 [K, Hp, Wp]: labels resized with nearest neighbour (ids stay ids), one
    channel per id, zero padding.
    """
    x = torch.as_tensor(np.ascontiguousarray(labels)).to(device)
    if geometry.resized:
        x = F.interpolate(x[None, None].float(), size=geometry.processed, mode="nearest")[0, 0]
    ids = torch.tensor(object_ids, device=device, dtype=x.dtype).view(-1, 1, 1)
    onehot = (x[None] == ids).float()
    return _padded(onehot, geometry.padding)


def _padded(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """x [..., H, W] zero-padded by (left, right, top, bottom) ``padding`` (x itself if none)."""
    return F.pad(x, padding) if any(padding) else x


def to_original(prob: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Unpad network-resolution probabilities and upsample them bilinearly to the original size.

    prob: [C, Hp, Wp] -> float32 [C, H, W].
    """
    x = unpad(prob.float(), geometry.padding)
    if x.shape[-2:] != geometry.original:
        x = F.interpolate(x[None], size=geometry.original, mode="bilinear", align_corners=False)[0]
    return x


def labels_from_prob(prob: torch.Tensor, object_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax over background + K objects, mapped to the objects' ids, and the maximum.

    prob: [K+1, H, W] (background first); object_ids: the K ids of channels 1..K.
    Returns (uint8 [H, W] ids, 0 = background; [H, W] the winning probability). Ties go to
    the lower channel, as ``torch.argmax``; a running comparison over the few channels is
    several times faster on CPU than an argmax reduction over the outer dimension.
    """
    best = prob[0].clone()
    labels = torch.zeros(prob.shape[1:], dtype=torch.uint8, device=prob.device)
    for channel, obj in enumerate(object_ids, start=1):
        wins = prob[channel] > best
        labels.masked_fill_(wins, obj)
        best = torch.maximum(best, prob[channel])
    return labels, best
