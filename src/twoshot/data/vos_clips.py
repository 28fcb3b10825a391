"""Map-style dataset of training clips from videos (STCN main training, two-shot phases).

:class:`VOSClipDataset` turns ``list[VideoSequence]`` into training clips, each a
:class:`~twoshot.data.batch.ClipBatch` of one clip (T = 3, or ``num_frames`` in samplings full
and bank; S = crop size; K = ``num_objects``) with every field set:

- the objects are up to K distinct objects present in frame 0 *after* augmentation, drawn by
  :func:`twoshot.data.sampling.sample_objects` (STCN: K = 2, a target and, if there is one, a
  second object; Cutie: K = 3); slot k's pixels are class k in ``cls_gt``, empty slots have
  zero masks, ``object_ids`` -1 and ``selector`` 0 (slot 1 always has 1, as in STCN and
  Cutie, even when the crops lost every object);
- ``cls_gt`` is -1 on frames without a label (``labeled`` False);
- ``geometry``, ``crop_box``, ``frame_size`` and ``object_ids`` let phase 2 write refined
  labels back onto the original frames (:mod:`twoshot.train.write_back`).

Samplings (DESIGN.md §2):

- ``full``: STCN main training; clips by STCN's sampling over the annotated frames (all of
  them in DAVIS; YouTube-VOS's every-5th-frame lists use ``annotation_stride=5``).
- ``labeled_only``: two-shot warm-up; the same sampling over the labeled frames only, as the
  reference's warm-up does with its budget list (so two labeled frames give A,A,B clips).
- ``phase1``: the clip starts at a labeled frame, the next two come from all frames within
  the skip window (see :func:`twoshot.data.sampling.sample_phase1_frames`); frames without a
  label get ``cls_gt`` -1 and ``labeled`` False, and their annotation is never opened: only
  ``VideoSequence.mask_paths`` is read, for labeled frames, and no folder is listed.
- ``bank``: phase 2; every frame has a (pseudo) label in the bank and any may be the
  reference; STCN sampling over all frames. A video missing bank PNGs is an error.

With ``num_frames`` other than 3 (Cutie's 8-frame clips), samplings full and bank draw their
frames as Cutie does (:func:`twoshot.data.sampling.sample_window_frames`), from the annotated
frames (full) or all frames (bank); the other samplings keep 3-frame clips.

A sample is a pure function of ``(seed, epoch, index)`` and the current max skip:
:meth:`set_epoch` and :meth:`set_max_skip` change them. DataLoader workers hold their own copy
of the dataset, so call these in the process that makes the sample (as the trainer's
``StreamItems`` wrapper does) or before the epoch's iterator starts the workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from twoshot.data.augment import AugmentedClip, ClipAugment, to_normalized_tensor
from twoshot.data.batch import ClipBatch
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_frame, read_mask
from twoshot.data.sampling import (
    CLIP_LENGTH,
    RandomSource,
    clip_rng,
    effective_max_skip,
    sample_list_frames,
    sample_objects,
    sample_phase1_frames,
    sample_stcn_frames,
    sample_window_frames,
)
from twoshot.errors import UserError

CLIP_SAMPLINGS = ("full", "labeled_only", "phase1", "bank")
VOID_LABEL = 255  # DAVIS-style "don't care"; never chosen as an object, read as background


class VOSClipDataset(Dataset):
    """Training clips from videos; one sample per video per ``repeats`` (see module doc).

    sequences: the videos; crop_size: S; sampling: one of :data:`CLIP_SAMPLINGS`; max_skip: the initial
    curriculum value (frames; divided by ``annotation_stride`` for lists of every n-th
    frame, e.g. 5 for YouTube-VOS); seed: base of every sample's generator; repeats: the
    dataset lists each video this many times (distinct samples; helps tiny datasets fill
    batches); max_tries: crops re-drawn when the first frame loses every object (STCN: 5);
    augment: the clip augmentation (STCN's at ``crop_size`` by default);
    labeled_clip_share: sampling ``phase1`` only, the chance that a sample is a labeled-only
    clip (as sampling ``labeled_only``) instead of a phase-1 clip (0 = the reference);
    num_objects: K, the objects per clip (STCN 2, Cutie 3).
    Videos with fewer than 3 frames or without annotations are skipped with one warning;
    UserError if none is usable or if a listed file is missing.
    """

    def __init__(
        self,
        sequences: Sequence[VideoSequence],
        crop_size: int,
        sampling: str = "full",
        *,
        max_skip: int = 5,
        annotation_stride: int = 1,
        seed: int = 0,
        repeats: int = 1,
        max_tries: int = 5,
        augment: ClipAugment | None = None,
        labeled_clip_share: float = 0.0,
        num_frames: int = CLIP_LENGTH,
        num_objects: int = 2,
    ) -> None:
        if sampling not in CLIP_SAMPLINGS:
            raise UserError(f"unknown clip sampling {sampling!r}; choose one of: {', '.join(CLIP_SAMPLINGS)}")
        if crop_size < 1:
            raise UserError(f"crop size must be positive, got {crop_size}")
        if repeats < 1 or max_tries < 1:
            raise UserError(f"repeats and max_tries must be >= 1 (got {repeats}, {max_tries})")
        if not sequences:
            raise UserError("no training videos: the dataset is empty")
        if num_frames < 2:
            raise UserError(f"a training clip needs at least 2 frames, got num_frames={num_frames}")
        if not 0.0 <= labeled_clip_share <= 1.0:
            raise UserError(f"labeled_clip_share must be in [0, 1], got {labeled_clip_share}")
        if num_objects < 1:
            raise UserError(f"a training clip needs at least 1 object, got num_objects={num_objects}")
        self.sampling = sampling
        self.num_objects = num_objects
        # Samplings full and bank take clips of num_frames frames (Cutie's 8-frame clips); the
        # two-shot warm-up and phase-1 clips are 3 frames by the method's design.
        self.num_frames = num_frames if sampling in ("full", "bank") else CLIP_LENGTH
        self.labeled_clip_share = labeled_clip_share
        self.crop_size = crop_size
        self.annotation_stride = annotation_stride
        self.seed = seed
        self.repeats = repeats
        self.max_tries = max_tries
        self.augment = augment or ClipAugment(crop_size)
        self.epoch = 0
        self.max_skip = effective_max_skip(max_skip, annotation_stride)
        self.videos: list[VideoSequence] = []
        self._annotated: list[list[int]] = []
        self._empty_checked: dict[str, bool] = {}
        skipped: list[str] = []
        for video in sequences:
            reason = self._unusable(video)
            if reason:
                skipped.append(f"{video.name} ({reason})")
                continue
            self.videos.append(video)
            self._annotated.append(sorted(video.mask_paths))
        if not self.videos:
            raise UserError(
                f"no usable training videos among {len(sequences)}: "
                + "; ".join(skipped[:10])
                + (" ..." if len(skipped) > 10 else "")
            )
        if skipped:
            warnings.warn(
                f"skipping {len(skipped)} of {len(sequences)} training videos: "
                + "; ".join(skipped[:10])
                + (" ..." if len(skipped) > 10 else ""),
                UserWarning,
                stacklevel=2,
            )

    def _unusable(self, video: VideoSequence) -> str | None:
        """Why ``video`` cannot give clips (None if it can); UserError for broken listings."""
        if not video.frame_paths:
            return "frames in a video file; extract them to images for training"
        if len(video.frame_paths) != len(video.frame_names):
            raise UserError(
                f"video {video.name}: {len(video.frame_paths)} frame files but "
                f"{len(video.frame_names)} frame names"
            )
        if video.num_frames < self.num_frames:
            return f"{video.num_frames} frames, clips need {self.num_frames}"
        if (
            self.num_frames != CLIP_LENGTH
            and self.sampling == "full"
            and len(video.mask_paths) < self.num_frames
        ):
            return f"{len(video.mask_paths)} annotated frames, clips need {self.num_frames}"
        if not video.mask_paths:
            return "no annotated frame"
        bad = [i for i in video.mask_paths if not 0 <= i < video.num_frames]
        if bad:
            raise UserError(
                f"video {video.name}: annotation for frame {bad[0]}, but the video "
                f"has {video.num_frames} frames"
            )
        if self.sampling == "bank" and len(video.mask_paths) < video.num_frames:
            missing = next(i for i in range(video.num_frames) if i not in video.mask_paths)
            raise UserError(
                f"video {video.name}: the pseudo-label bank has no mask for frame "
                f"{video.frame_names[missing]} ({len(video.mask_paths)} of "
                f"{video.num_frames} frames); regenerate the bank"
            )
        # Existence only (a stat per file): unreadable contents are reported when read.
        for path in list(video.frame_paths) + list(video.mask_paths.values()):
            if not Path(path).is_file():
                raise UserError(f"video {video.name}: {path} does not exist")
        return None

    def __len__(self) -> int:
        """Number of samples per epoch: usable videos x repeats."""
        return len(self.videos) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def set_max_skip(self, max_skip: int) -> None:
        """Set the curriculum's max skip (in frames; divided by ``annotation_stride``)."""
        self.max_skip = effective_max_skip(max_skip, self.annotation_stride)

    def sample_frames(self, rng: np.random.Generator, video_index: int) -> list[int]:
        """Frame indices of one clip of video ``video_index`` under the dataset's sampling."""
        video = self.videos[video_index]
        source = cast(RandomSource, rng)  # a Generator is one; its overloaded stubs hide it
        if self.sampling == "phase1" and not (
            self.labeled_clip_share > 0 and rng.random() < self.labeled_clip_share
        ):
            return sample_phase1_frames(source, video.num_frames, self._annotated[video_index], self.max_skip)
        if self.num_frames != CLIP_LENGTH:  # samplings full and bank only
            positions = self._annotated[video_index] if self.sampling == "full" else range(video.num_frames)
            picks = sample_window_frames(source, len(positions), self.num_frames, self.max_skip)
            return [int(positions[p]) for p in picks]
        if self.sampling == "bank":
            return sample_stcn_frames(source, video.num_frames, self.max_skip)
        return sample_list_frames(source, self._annotated[video_index], self.max_skip)

    def __getitem__(self, index: int) -> ClipBatch:
        """Sample ``index`` of the current epoch: a ClipBatch of one clip (see the module doc)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        video_index = index % len(self.videos)
        video = self.videos[video_index]
        rng = clip_rng(self.seed, self.epoch, index)
        frame_cache: dict[int, np.ndarray] = {}
        mask_cache: dict[int, np.ndarray] = {}
        chosen: list[int] = []
        for _ in range(self.max_tries):
            frames = self.sample_frames(rng, video_index)
            images = [self._frame(video, f, frame_cache) for f in frames]
            masks = [
                self._mask(video, f, mask_cache, images[t].shape[:2]) if f in video.mask_paths else None
                for t, f in enumerate(frames)
            ]
            clip = self.augment.augment_clip(rng, images, masks)
            first = clip.masks[0]
            assert first is not None  # every sampling starts at an annotated frame
            objects = [int(o) for o in np.unique(first) if o not in (0, VOID_LABEL)]
            if objects:
                chosen = sample_objects(cast(RandomSource, rng), objects, self.num_objects)
                break
        else:
            # Like STCN, a clip whose crops never showed an object is all background; but a
            # video with no object at all is a mistake in the data, so say so.
            self._check_not_empty(video)
        return _pack(clip, chosen, self.num_objects, video.name, frames, images[0].shape[:2])

    def _frame(self, video: VideoSequence, index: int, cache: dict[int, np.ndarray]) -> np.ndarray:
        if index not in cache:
            cache[index] = read_frame(video.frame_paths[index])
        return cache[index]

    def _mask(
        self, video: VideoSequence, index: int, cache: dict[int, np.ndarray], shape: tuple[int, ...]
    ) -> np.ndarray:
        if index not in cache:
            path = video.mask_paths[index]
            labels, _ = read_mask(path)
            if labels.shape != tuple(shape):
                raise UserError(
                    f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but frame "
                    f"{video.frame_paths[index]} is {shape[1]}x{shape[0]}"
                )
            cache[index] = labels
        return cache[index]

    def _check_not_empty(self, video: VideoSequence) -> None:
        """UserError if none of the video's annotation files (only those listed) has an object."""
        if video.name not in self._empty_checked:
            has_object = False
            for path in video.mask_paths.values():
                labels, _ = read_mask(path)
                if np.any((labels != 0) & (labels != VOID_LABEL)):
                    has_object = True
                    break
            self._empty_checked[video.name] = has_object
        if not self._empty_checked[video.name]:
            raise UserError(
                f"video {video.name}: no object in any of its "
                f"{len(video.mask_paths)} annotation masks "
                f"(e.g. {next(iter(video.mask_paths.values()))})"
            )

    def validate_masks(self) -> None:
        """Read every listed annotation now and raise UserError for a video with no object.

        Optional up-front check (``__getitem__`` finds such videos only when it meets them).
        """
        for video in self.videos:
            self._check_not_empty(video)


def _pack(
    clip: AugmentedClip,
    objects: Sequence[int],
    slots: int,
    name: str,
    frames: Sequence[int],
    frame_size: tuple[int, ...],
) -> ClipBatch:
    """The clip as a ClipBatch of one: ``objects`` (ids, in slot order) fill the first of
    ``slots`` slots; frames without labels get class -1. ``frame_size``: the original (H, W)."""
    pixels, labels = clip.pixels, clip.masks
    steps, size = pixels.shape[0], pixels.shape[1]
    first = np.zeros((slots, size, size), dtype=np.float32)
    cls_gt = np.zeros((steps, size, size), dtype=np.int64)
    labeled = np.zeros(steps, dtype=bool)
    for t, frame_labels in enumerate(labels):
        if frame_labels is None:
            cls_gt[t] = -1
            continue
        labeled[t] = True
        for slot, obj in enumerate(objects):
            if t == 0:
                first[slot] = frame_labels == obj
            cls_gt[t][frame_labels == obj] = slot + 1
    # Slot 1 counts as present even in a clip whose crops lost every object (an all-background
    # clip), as in both references: the loss then trains background against one object.
    filled = max(1, len(objects))
    present = [1.0] * filled + [0.0] * (slots - filled)
    ids = [int(o) for o in objects] + [-1] * (slots - len(objects))
    return ClipBatch.single(
        rgb=to_normalized_tensor(pixels),
        first_masks=torch.from_numpy(first),
        cls_gt=torch.from_numpy(cls_gt),
        selector=torch.tensor(present, dtype=torch.float32),
        labeled=torch.from_numpy(labeled),
        name=name,
        frames=frames,
        geometry=torch.from_numpy(clip.matrices),
        crop_box=torch.tensor(clip.crop_box, dtype=torch.int64),
        frame_size=torch.tensor(tuple(frame_size), dtype=torch.int64),
        object_ids=torch.tensor(ids, dtype=torch.int64),
    )
