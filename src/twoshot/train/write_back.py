"""Optional write-back of phase-2 refined labels to the pseudo-label bank (DESIGN §2).

With ``twoshot.write_back`` on, :class:`~twoshot.train.phases.Phase2Regime` hands every refined
batch to a :class:`BankWriter`. For every sample and clip frame 1..T-1, the pixels where the
model is confident (``confident_labels(prob, refine_threshold) != -1``) are warped back onto
the original frame with the inverse of the clip's geometry (nearest neighbour; only frame
pixels inside the crop box whose image falls inside the crop count,
:func:`twoshot.data.augment.labels_to_frame`) and merged into that frame's bank PNG:

- class k -> the id of the clip's k-th object (``object_ids``; empty slots are skipped);
- class 0 -> 0 only where the bank holds one of the clip's objects: class 0 means "none of
  the clip's objects", so other objects (not sampled into the clip) are left alone.

Labeled (ground-truth) frames, as the bank manifest lists them, are never touched. Each PNG
is replaced atomically (temporary file + rename, :func:`twoshot.data.masks.write_mask`), and
the read-modify-write of a video's frames holds an exclusive ``flock`` on
``BANK/<video>/.write_back.lock``, so DDP ranks writing the same video cannot lose each other's
updates. Readers (DataLoader workers) take no lock: a rename shows them the old or the new
file, never half of one. Each rank writes the frames of its own batches; nothing is
exchanged between ranks. The manifest's ``write_back`` entry counts the rewrites (updated under
``BANK/.manifest.lock``), so a user can tell that the bank is no longer phase 1's output.

Locks are POSIX ``flock``s (Linux, macOS); write-back is refused where ``fcntl`` is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twoshot.bank import (
    MANIFEST,
    MANIFEST_LOCK,
    WRITE_BACK,
    check_locks,
    exclusive_lock,
    read_labeled_frames,
    video_lock,
)
from twoshot.data.augment import labels_to_frame
from twoshot.data.batch import ClipBatch
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask, write_mask
from twoshot.errors import UserError
from twoshot.fsutil import write_json

NO_LABEL = 255  # in class maps: nothing to write at this pixel
BATCH_FIELDS = ("geometry", "crop_box", "frame_size", "object_ids")  # VOSClipDataset sets them

PathLike = str | os.PathLike[str]


def merge_classes(bank: np.ndarray, classes: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """Merge refined classes into a bank label map.

    bank: uint8 [H, W] object ids; classes: uint8 [H, W] with 0..K or :data:`NO_LABEL`;
    object_ids: the K ids classes 1..K stand for (-1: empty slot, its class ignored).
    Returns the new uint8 [H, W]: class k -> ``object_ids[k-1]``, class 0 -> 0 only where
    ``bank`` holds one of the ids (another object is not "background").
    """
    out = bank.copy()
    ours = np.zeros(bank.shape, dtype=bool)
    for class_id, object_id in enumerate(object_ids, start=1):
        if object_id >= 0:
            ours |= bank == object_id
            out[classes == class_id] = object_id
    out[(classes == 0) & ours] = 0
    return out


def rewrite_frame(path: PathLike, classes: np.ndarray, object_ids: Sequence[int]) -> int:
    """Merge ``classes`` (uint8 [H, W] on the original frame, see :func:`merge_classes`) into
    the bank PNG at ``path`` and replace it atomically if anything changed (palette kept).

    The caller holds the video's lock. Returns the number of pixels whose id changed.
    """
    labels, palette = read_mask(path)
    if labels.shape != classes.shape:
        raise UserError(
            f"{path}: bank mask is {labels.shape[1]}x{labels.shape[0]} but the "
            f"training frame is {classes.shape[1]}x{classes.shape[0]}"
        )
    merged = merge_classes(labels, classes, object_ids)
    changed = int(np.count_nonzero(merged != labels))
    if changed:
        write_mask(path, merged, palette)
    return changed


@dataclass
class WriteStats:
    """Counts of one or more write-backs: PNGs rewritten, pixels changed, pixels looked at."""

    files: int = 0
    pixels: int = 0
    visited: int = 0

    def add(self, other: WriteStats) -> None:
        """Add ``other``'s counts to these."""
        self.files += other.files
        self.pixels += other.pixels
        self.visited += other.visited


def confident_class_maps(confident: torch.Tensor) -> np.ndarray:
    """int64 [B, T-1, S, S] confident labels (-1 = not confident) -> uint8 numpy with -1 as
    :data:`NO_LABEL`."""
    return torch.where(confident < 0, NO_LABEL, confident).to(torch.uint8).cpu().numpy()


class BankWriter:
    """Writes one process's refined labels into the bank folder ``bank``.

    bank: the pseudo-label bank (``BANK/<video>/<frame>.png`` and its manifest); videos: the
    training videos (their ``frame_names`` give the PNG names; clip frame indices refer to
    them). UserError if the manifest cannot tell the labeled frames or locks are unavailable.
    """

    def __init__(self, bank: PathLike, videos: Sequence[VideoSequence]) -> None:
        check_locks()
        self.bank = Path(bank)
        self.frame_names = {video.name: list(video.frame_names) for video in videos}
        self.labeled = read_labeled_frames(self.bank, videos)
        self.pending = WriteStats()  # rewrites not yet counted in the manifest
        self.recorded = False  # whether this process has marked the manifest

    def write_batch(self, batch: ClipBatch, confident: torch.Tensor) -> WriteStats:
        """Write a batch's confident labels into the bank.

        batch: a VOSClipDataset batch (``geometry`` [B,T,3,3], ``crop_box`` [B,4],
        ``frame_size`` [B,2], ``object_ids`` [B,K], ``names``, ``frames`` [B,T]); confident:
        int64 [B, T-1, S, S], the class of each pixel of frames 1..T-1 where the model is
        confident, -1 elsewhere. Returns this batch's counts.
        """
        fields = batch.geometry, batch.crop_box, batch.frame_size, batch.object_ids
        geometry_t, boxes_t, sizes_t, ids_t = fields
        if geometry_t is None or boxes_t is None or sizes_t is None or ids_t is None:
            missing = [name for name, value in zip(BATCH_FIELDS, fields) if value is None]
            raise UserError(
                f"twoshot.write_back: the training batches lack {', '.join(missing)}; "
                "they must come from VOSClipDataset"
            )
        classes = confident_class_maps(confident)
        geometry = geometry_t.cpu().numpy()
        boxes = boxes_t.cpu().numpy()
        sizes = sizes_t.cpu().numpy()
        ids = ids_t.cpu().tolist()
        stats = WriteStats()
        clip_frames = batch.frames.cpu().tolist()
        for video, items in self._frames_by_video(batch.names, clip_frames).items():
            with video_lock(self.bank / video):
                for b, t, frame in items:
                    if frame in self.labeled[video]:
                        continue  # ground truth of the budget: never rewritten
                    on_frame = labels_to_frame(
                        classes[b, t - 1],
                        geometry[b, t],
                        (int(boxes[b, 0]), int(boxes[b, 1]), int(boxes[b, 2]), int(boxes[b, 3])),
                        (int(sizes[b, 0]), int(sizes[b, 1])),
                        NO_LABEL,
                    )
                    if not np.any(on_frame != NO_LABEL):
                        # Nothing confident landed on the frame: skip reading its PNG.
                        stats.add(WriteStats(0, 0, on_frame.size))
                        continue
                    path = self.bank / video / f"{self.frame_names[video][frame]}.png"
                    changed = rewrite_frame(path, on_frame, ids[b])
                    stats.add(WriteStats(int(changed > 0), changed, on_frame.size))
        self.pending.add(stats)
        if stats.files and not self.recorded:
            self.flush()  # mark the bank as changed at once, not only at the next log step
        return stats

    def _frames_by_video(
        self, names: Sequence[str], frames: list[list[int]]
    ) -> dict[str, list[tuple[int, int, int]]]:
        """(sample, clip frame 1..T-1, video frame index) grouped by video, from the batch's
        ``names`` (B) and ``frames`` (B lists of T video frame indices)."""
        grouped: dict[str, list[tuple[int, int, int]]] = {}
        for b, name in enumerate(names):
            if name not in self.frame_names:
                raise UserError(f"twoshot.write_back: video {name} of the batch is not in the bank")
            for t in range(1, len(frames[b])):
                grouped.setdefault(name, []).append((b, t, int(frames[b][t])))
        return grouped

    def flush(self) -> None:
        """Add the rewrites not yet recorded to the manifest's ``write_back`` entry
        ({"files_rewritten", "pixels_changed", "updated"}, summed over processes and runs).
        Does nothing when there are none."""
        if not self.pending.files:
            return
        path = self.bank / MANIFEST
        with exclusive_lock(self.bank / MANIFEST_LOCK):
            manifest = json.loads(path.read_text(encoding="utf-8"))
            entry = manifest.get(WRITE_BACK) or {"files_rewritten": 0, "pixels_changed": 0}
            entry["files_rewritten"] = int(entry.get("files_rewritten", 0)) + self.pending.files
            entry["pixels_changed"] = int(entry.get("pixels_changed", 0)) + self.pending.pixels
            entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest[WRITE_BACK] = entry
            write_json(path, manifest)
        self.pending = WriteStats()
        self.recorded = True
