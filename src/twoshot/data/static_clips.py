"""Static-image pretraining data (STCN stage 0): 3-frame pseudo videos from image/mask pairs.

:class:`StaticClipDataset` finds image/mask pairs anywhere under a root folder:

- same folder: ``<name>.jpg`` (or .jpeg/.bmp/.webp) next to ``<name>.png`` — STCN's
  preprocessed static sets, our generated data, and FSS-1000 (``<class>/<n>.jpg`` + ``.png``);
- two folders: ``<X>-Image/<name>.jpg`` + ``<X>-Mask/<name>.png`` (DUTS),
  ``images/`` + ``ground_truth_mask/`` (ECSSD), ``images/`` + ``masks/``.

Each sample warps one pair into 3 frames (:class:`twoshot.data.static_augment.StaticClipAugment`)
and is a :class:`~twoshot.data.batch.ClipBatch` of one clip, as :mod:`twoshot.data.vos_clips`
samples, with one object in slot 1 of ``num_objects`` (the others empty: ``selector``
[1, 0, ...]), ``labeled`` all True, ``frames`` all 0 and no geometry fields.

Masks are binarised: an indexed (palette) PNG by ``label > 0``; a grayscale/RGB one by
``value > 127`` (saliency masks are 0/255 with soft edges), or ``> 0`` when its values are
only 0 and 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from twoshot.data.augment import to_normalized_tensor
from twoshot.data.batch import ClipBatch
from twoshot.data.masks import read_frame
from twoshot.data.sampling import clip_rng
from twoshot.data.static_augment import StaticClipAugment
from twoshot.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".webp")
# (image folder, mask folder) name pairs of two-folder layouts, besides DUTS's "-Image"/"-Mask".
FOLDER_PAIRS = (("images", "ground_truth_mask"), ("images", "masks"))


def find_static_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """All (image, mask) pairs under ``root`` (see the module doc), sorted by image path.

    Raises UserError if ``root`` is not a folder or holds no pair.
    """
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"{base}: static image folder not found")
    pairs: list[tuple[Path, Path]] = []
    for folder, _, files in sorted(os.walk(base)):
        here = Path(folder)
        mask_dir = _mask_folder(here)
        stems_png = {Path(f).stem: f for f in files if f.lower().endswith(".png")}
        other_pngs = (
            {Path(f).stem: f for f in os.listdir(mask_dir) if f.lower().endswith(".png")}
            if mask_dir is not None
            else {}
        )
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if stem in stems_png:
                pairs.append((here / name, here / stems_png[stem]))
            elif stem in other_pngs and mask_dir is not None:
                pairs.append((here / name, mask_dir / other_pngs[stem]))
    if not pairs:
        raise UserError(
            f"{base}: no image/mask pairs found; expected <name>.jpg next to "
            "<name>.png, or <X>-Image/ + <X>-Mask/ (DUTS), or images/ + "
            "ground_truth_mask/ (ECSSD)"
        )
    return sorted(pairs)


def _mask_folder(folder: Path) -> Path | None:
    """The sibling mask folder of a two-folder layout's image folder, if ``folder`` is one."""
    candidates = []
    if folder.name.endswith("-Image"):
        candidates.append(folder.with_name(folder.name[: -len("-Image")] + "-Mask"))
    candidates += [folder.with_name(m) for i, m in FOLDER_PAIRS if folder.name == i]
    return next((c for c in candidates if c.is_dir()), None)


def read_binary_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask PNG as bool [H, W] (rule in the module doc); UserError if unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image) > 0
            values = np.asarray(image.convert("L"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read mask ({exc})") from exc
    return values > (0 if values.max(initial=0) <= 1 else 127)


class StaticClipDataset(Dataset):
    """3-frame clips made from static image/mask pairs under ``root``.

    crop_size: S; seed: base of each sample's generator (a sample is a pure function of
    ``(seed, epoch, index)``); repeats: each pair is listed this many times per epoch;
    augment: the warp (STCN's at ``crop_size`` by default); num_objects: K, the object slots
    of a clip (its one object and K - 1 empty ones). UserError if no pair is found;
    an unreadable file, mismatched sizes or an empty mask raise UserError naming the file
    when the sample is made (or all at once with :meth:`validate_masks`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop_size: int,
        *,
        seed: int = 0,
        repeats: int = 1,
        augment: StaticClipAugment | None = None,
        num_objects: int = 2,
    ) -> None:
        if crop_size < 1:
            raise UserError(f"crop size must be positive, got {crop_size}")
        if num_objects < 1:
            raise UserError(f"a training clip needs at least 1 object, got num_objects={num_objects}")
        if repeats < 1:
            raise UserError(f"repeats must be >= 1, got {repeats}")
        self.root = Path(root)
        self.pairs = find_static_pairs(self.root)
        self.crop_size = crop_size
        self.seed = seed
        self.repeats = repeats
        self.augment = augment or StaticClipAugment(crop_size)
        self.num_objects = num_objects
        self.epoch = 0

    def __len__(self) -> int:
        """Number of samples per epoch: pairs x repeats."""
        return len(self.pairs) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def set_max_skip(self, max_skip: int) -> None:
        """No frames to skip between in a static image; present so trainers treat all
        clip datasets alike."""

    def load_pair(self, pair_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 [H, W, 3] and mask bool [H, W] of pair ``pair_index``; UserError for an
        unreadable file, a size mismatch or a mask without object."""
        image_path, mask_path = self.pairs[pair_index]
        image = read_frame(image_path)
        mask = read_binary_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise UserError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            raise UserError(f"{mask_path}: mask has no object (all background)")
        return image, mask

    def __getitem__(self, index: int) -> ClipBatch:
        """Sample ``index`` of the current epoch: a ClipBatch of one clip with one object."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        pair_index = index % len(self.pairs)
        image, mask = self.load_pair(pair_index)
        pixels, labels = self.augment(clip_rng(self.seed, self.epoch, index), image, mask)
        steps = pixels.shape[0]
        first = np.zeros((self.num_objects, *labels.shape[1:]), dtype=np.float32)
        first[0] = labels[0]
        return ClipBatch.single(
            rgb=to_normalized_tensor(pixels),
            first_masks=torch.from_numpy(first),
            cls_gt=torch.from_numpy(labels.astype(np.int64)),
            selector=torch.tensor([1.0] + [0.0] * (self.num_objects - 1), dtype=torch.float32),
            labeled=torch.ones(steps, dtype=torch.bool),
            name=str(self.pairs[pair_index][0].relative_to(self.root)),
            frames=[0] * steps,
        )

    def validate_masks(self) -> None:
        """Read every pair now; UserError for the first bad one (see :meth:`load_pair`)."""
        for pair_index in range(len(self.pairs)):
            self.load_pair(pair_index)
