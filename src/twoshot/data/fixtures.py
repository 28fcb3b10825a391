"""Tiny on-disk datasets for tests: DAVIS, YouTube-VOS, generic folders and video files.

Each ``make_*`` function writes a complete, valid layout of a few small videos under a
folder (use pytest's ``tmp_path``) in well under a second and returns a
:class:`GeneratedDataset` holding the root to pass to
:func:`twoshot.data.readers.open_dataset` and the exact ground truth it wrote::

    from twoshot.data.fixtures import make_davis
    from twoshot.data.readers import open_dataset

    data = make_davis(tmp_path / "davis", {"bear": 6, "cat": 5})
    sequences = open_dataset("davis", data.root, "train")
    data.labels["bear"]        # uint8 [6, H, W], the mask of every frame
    data.annotated["bear"]     # frame indices whose PNG exists ([0..5] here)

Videos come from :func:`random_video`: a background of random 4x4 colour blocks and
rectangular objects of distinct flat colours, each in its own horizontal band (so objects
never hide each other and every object is visible on every frame from its first one),
moving left and right. Frames are saved as JPEG (lossy: compare pixels with a tolerance;
the mean error is about 5 grey levels); masks as indexed PNGs
with the DAVIS palette unless another is given, so labels read back exactly.

Object ids can be non-contiguous (``object_ids=(1, 3)``) and objects can appear late
(``first_frames={3: 5}``), as in YouTube-VOS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.masks import write_frame, write_mask

PathLike = str | os.PathLike[str]


@dataclass
class GeneratedDataset:
    """What a ``make_*`` fixture wrote.

    root: path to give ``open_dataset`` (for a video: the video file).
    layout / split: the ``open_dataset`` arguments that read it back.
    frames: video -> uint8 [T, H, W, 3] as generated (before JPEG / video compression).
    labels: video -> uint8 [T, H, W], the full ground truth of every frame.
    annotated: video -> frame indices whose annotation PNG was written.
    frame_names: video -> frame name stems in order ("00000" ...).
    masks_dir: video fixtures only: folder of ``<frame_index>.png`` masks.
    """

    root: Path
    layout: str
    split: str | None
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    annotated: dict[str, list[int]] = field(default_factory=dict)
    frame_names: dict[str, list[str]] = field(default_factory=dict)
    masks_dir: Path | None = None


def random_video(
    num_frames: int,
    size: tuple[int, int] = (24, 32),
    *,
    object_ids: Sequence[int] = (1, 2),
    first_frames: Mapping[int, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic video with moving rectangles and its masks.

    num_frames: T; size: (H, W), H >= 6 per object; object_ids: label of each object;
    first_frames: object id -> first frame where it is visible (default 0 for all).
    Returns (frames uint8 [T, H, W, 3], labels uint8 [T, H, W]); deterministic in ``seed``.
    """
    height, width = size
    if height < 6 * len(object_ids) or width < 8:
        raise ValueError(f"size {size} is too small for {len(object_ids)} objects")
    rng = np.random.default_rng(seed)
    first_frames = dict(first_frames or {})
    # Flat 4x4 blocks of random colour: textured, yet survives JPEG's chroma subsampling.
    coarse = rng.integers(40, 110, size=(-(-height // 4), -(-width // 4), 3), dtype=np.uint8)
    background = np.kron(coarse, np.ones((4, 4, 1), dtype=np.uint8))[:height, :width]
    frames = np.repeat(background[None], num_frames, axis=0)
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    band = height // len(object_ids)
    for k, obj in enumerate(object_ids):
        color = rng.integers(150, 256, size=3, dtype=np.uint8)
        obj_h = max(2, band // 2)
        obj_w = max(3, width // 4)
        top = k * band + rng.integers(0, band - obj_h + 1)
        x0 = int(rng.integers(0, width - obj_w + 1))
        speed = int(rng.integers(1, 3)) * (1 if rng.random() < 0.5 else -1)
        for t in range(first_frames.get(obj, 0), num_frames):
            # Bounce between the borders so the object stays fully visible.
            span = width - obj_w
            pos = (x0 + speed * t) % (2 * span) if span else 0
            left = pos if pos <= span else 2 * span - pos
            labels[t, top : top + obj_h, left : left + obj_w] = obj
            frames[t, top : top + obj_h, left : left + obj_w] = color
    return frames, labels


def _write_video_folder(images: Path, frames: np.ndarray, names: Sequence[str], ext: str) -> None:
    """Write frames [T, H, W, 3] as ``images/<name><ext>``."""
    for rgb, name in zip(frames, names):
        write_frame(images / f"{name}{ext}", rgb)


def _names(num_frames: int, step: int = 1) -> list[str]:
    """Zero-padded frame names 00000, 0000<step> ..."""
    return [f"{i * step:05d}" for i in range(num_frames)]


def make_davis(
    root: PathLike,
    videos: Mapping[str, int] | None = None,
    *,
    size: tuple[int, int] = (24, 32),
    object_ids: Sequence[int] = (1, 2),
    splits: Mapping[str, Sequence[str]] | None = None,
    resolution: str = "480p",
    annotate: str | Sequence[int] = "all",
    palette: bytes | None = None,
    seed: int = 0,
) -> GeneratedDataset:
    """DAVIS 2017 layout: ``JPEGImages/<res>/<video>/00000.jpg``, ``Annotations/<res>/...png``,
    ``ImageSets/2017/<split>.txt``.

    videos: name -> number of frames (default {"bear": 6, "cat": 5}); splits: split name ->
    video names (default: every video in both ``train`` and ``val``); annotate: ``"all"``
    (dense ground truth), ``"first"`` (frame 0 only) or a list of frame indices.
    """
    root = Path(root)
    videos = dict(videos or {"bear": 6, "cat": 5})
    data = GeneratedDataset(root=root, layout="davis", split="train")
    for v, (name, length) in enumerate(sorted(videos.items())):
        frames, labels = random_video(length, size, object_ids=object_ids, seed=seed * 1000 + v)
        names = _names(length)
        _write_video_folder(root / "JPEGImages" / resolution / name, frames, names, ".jpg")
        indices = (
            list(range(length))
            if annotate == "all"
            else [0]
            if annotate == "first"
            else [int(i) for i in annotate]
        )
        for i in indices:
            write_mask(root / "Annotations" / resolution / name / f"{names[i]}.png", labels[i], palette)
        data.frames[name], data.labels[name] = frames, labels
        data.annotated[name], data.frame_names[name] = indices, names
    for split, members in (splits or {"train": sorted(videos), "val": sorted(videos)}).items():
        path = root / "ImageSets" / "2017" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name}\n" for name in members), encoding="utf-8")
    return data


def make_youtube(
    root: PathLike,
    videos: Mapping[str, int] | None = None,
    *,
    split: str = "train",
    size: tuple[int, int] = (24, 32),
    object_ids: Sequence[int] = (1, 3),
    first_frames: Mapping[int, int] | None = None,
    all_frames: bool = True,
    every: int = 5,
    palette: bytes | None = None,
    seed: int = 0,
) -> GeneratedDataset:
    """YouTube-VOS layout: ``<split>/JPEGImages/<video>/*.jpg``, ``<split>/Annotations/...``,
    ``<split>/meta.json``.

    videos: name -> number of frames (default {"a1b2c3": 16, "d4e5f6": 11}); object_ids:
    default non-contiguous (1, 3); first_frames: object id -> first frame (default {3: 5}:
    object 3 appears in frame 5; keep it a multiple of ``every``).
    all_frames: JPEGs for every frame (``*_all_frames`` releases) and annotations every
    ``every``-th frame; False: only every ``every``-th frame exists, named 00000, 00005 ...
    A training split annotates every annotated-step frame; any other split (``valid``)
    annotates only each object's first frame, holding only the objects new there, and
    meta.json lists the frames a submission must contain.
    """
    base = Path(root) / split
    videos = dict(videos or {"a1b2c3": 16, "d4e5f6": 11})
    first_frames = dict({3: 5} if first_frames is None else first_frames)
    is_train = split.lower().startswith("train")
    data = GeneratedDataset(root=Path(root), layout="youtube", split=split)
    meta: dict[str, dict] = {"videos": {}}
    for v, (name, length) in enumerate(sorted(videos.items())):
        frames, labels = random_video(
            length, size, object_ids=object_ids, first_frames=first_frames, seed=seed * 1000 + v
        )
        if all_frames:
            names = _names(length)
            sampled = list(range(0, length, every))  # frames with annotations / in meta.json
        else:
            names = _names(length, every)
            sampled = list(range(length))
        _write_video_folder(base / "JPEGImages" / name, frames, names, ".jpg")
        objects = {}
        first_of: dict[int, int] = {}
        for obj in object_ids:
            present = [i for i in sampled if (labels[i] == obj).any()]
            if present:
                objects[str(obj)] = {"category": "thing", "frames": [names[i] for i in present]}
                first_of[obj] = present[0]
        meta["videos"][name] = {"objects": objects}
        if is_train:
            annotated = sampled
            masks = {i: labels[i] for i in sampled}
        else:
            annotated = sorted(set(first_of.values()))
            masks = {
                i: np.where(
                    np.isin(labels[i], [o for o, f in first_of.items() if f == i]), labels[i], 0
                ).astype(np.uint8)
                for i in annotated
            }
        for i, mask in masks.items():
            write_mask(base / "Annotations" / name / f"{names[i]}.png", mask, palette)
        data.frames[name], data.labels[name] = frames, labels
        data.annotated[name], data.frame_names[name] = annotated, names
    (base / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return data


def make_generic(
    root: PathLike,
    videos: Mapping[str, int] | None = None,
    *,
    size: tuple[int, int] = (24, 32),
    object_ids: Sequence[int] = (1, 2),
    first_frames: Mapping[int, int] | None = None,
    image_ext: str = ".jpg",
    names: Sequence[str] | None = None,
    palette: bytes | None = None,
    seed: int = 0,
) -> GeneratedDataset:
    """Generic layout: ``JPEGImages/<video>/<frame><image_ext>`` and ``Annotations/<video>/``
    with a PNG only for each frame where an object first appears (holding the new objects).

    videos: name -> number of frames (default {"clip": 6}); names: frame stems (default
    00000 ...), e.g. ``["f1", "f2", ..., "f10"]`` to test natural ordering.
    """
    root = Path(root)
    videos = dict(videos or {"clip": 6})
    first_frames = dict(first_frames or {})
    data = GeneratedDataset(root=root, layout="generic", split=None)
    for v, (name, length) in enumerate(sorted(videos.items())):
        frames, labels = random_video(
            length, size, object_ids=object_ids, first_frames=first_frames, seed=seed * 1000 + v
        )
        stems = list(names) if names is not None else _names(length)
        _write_video_folder(root / "JPEGImages" / name, frames, stems, image_ext)
        first_of = {obj: first_frames.get(obj, 0) for obj in object_ids}
        annotated = sorted(set(first_of.values()))
        for i in annotated:
            new = [o for o, f in first_of.items() if f == i]
            mask = np.where(np.isin(labels[i], new), labels[i], 0).astype(np.uint8)
            write_mask(root / "Annotations" / name / f"{stems[i]}.png", mask, palette)
        data.frames[name], data.labels[name] = frames, labels
        data.annotated[name], data.frame_names[name] = annotated, stems
    return data


def make_video_file(
    path: PathLike,
    num_frames: int = 8,
    *,
    size: tuple[int, int] = (32, 48),
    object_ids: Sequence[int] = (1, 2),
    mask_frames: Sequence[int] = (0,),
    fps: float = 10.0,
    palette: bytes | None = None,
    seed: int = 0,
) -> GeneratedDataset:
    """A video file (format from the suffix, e.g. ``clip.mp4``) written with PyAV, plus masks
    ``<stem>_masks/<frame_index:05d>.png`` next to it for ``mask_frames``.

    Read back with ``open_dataset("video", data.root, masks=data.masks_dir)``. Video
    compression is lossy: compare frames with a tolerance. Even sizes avoid padding.
    """
    from twoshot.data.writers import write_video  # local: writers import PyAV lazily too

    path = Path(path)
    frames, labels = random_video(num_frames, size, object_ids=object_ids, seed=seed)
    write_video(path, frames, fps=fps)
    masks_dir = DATASET_LAYOUTS["video"].annotation_root(path, None)
    for i in mask_frames:
        write_mask(masks_dir / f"{i:05d}.png", labels[i], palette)
    name = path.stem
    return GeneratedDataset(
        root=path,
        layout="video",
        split=None,
        frames={name: frames},
        labels={name: labels},
        annotated={name: sorted(mask_frames)},
        frame_names={name: _names(num_frames)},
        masks_dir=masks_dir,
    )
