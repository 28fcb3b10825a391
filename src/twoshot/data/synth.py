"""Generated VOS data: procedural videos in the DAVIS 2017 layout, plus static image pairs.

No data set can be downloaded on the project's machines, yet the two-shot method must be
seen to work. :func:`generate_dataset` writes a small dataset whose videos change
appearance a lot from start to end (texture and colour drift, lighting, deformation,
occlusion, objects leaving and re-entering), meant to make two labeled frames per video
show too little of each object, while the task stays learnable. (With the tiny model
trained for minutes on a CPU, training length still limits it more than labels do:
docs/results.md.)

Layout written under ``out`` (see docs/synthetic-data.md)::

    JPEGImages/480p/<video>/00000.jpg      frames (the folder is named 480p as in DAVIS,
    Annotations/480p/<video>/00000.png     whatever the size); a full indexed-PNG annotation
    ImageSets/2017/train.txt, val.txt      for every frame, objects 1..n, 0 = background
    static/<name>.jpg + static/<name>.png  static pretraining pairs, mask values 0 / 255
    synth.json                             arguments, knobs and statistics (no timings)

Every video is a pure function of (seed, split, index, frames, size, objects, config):
adding videos does not change the earlier ones, and the same arguments give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from twoshot.data.masks import write_frame, write_mask
from twoshot.data.synth_config import SynthConfig
from twoshot.data.synth_render import RenderedVideo, make_video
from twoshot.data.synth_scene import PlacementError
from twoshot.errors import UserError
from twoshot.fsutil import atomic_dir, atomic_open, atomic_path

# Written into synth.json; its presence marks a folder as ours, safe to replace.
GENERATOR_NAME = "twoshot synth"
FORMAT_VERSION = 1
MARKER_FILE = "synth.json"

MIN_SIDE = 32  # below this an object of the smallest size is a handful of pixels
MAX_SIDE = 4096  # a typo guard: 10 000 x 10 000 frames would fill the disk
MAX_OBJECTS = 255  # object ids are palette indices

_SPLIT_CODES = {"train": 0, "val": 1, "static": 2}


@dataclass
class SynthSummary:
    """What :func:`generate_dataset` wrote.

    stats (over every object in every frame of every video):
      occluded: share of object-frames with >= 10 % of the in-frame mask hidden by a nearer
        object or distractor; out_of_frame: share with >= 10 % of the mask outside the
        frame; absent: share with no visible pixel at all (fully out or fully occluded).
    """

    out: Path
    train: list[str]
    val: list[str]
    frames: int
    size: tuple[int, int]
    static_images: int
    files: int
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["size"] = list(self.size)
        return data


def _validate(
    out: Path,
    videos: int,
    frames: int,
    size: tuple[int, int],
    objects: tuple[int, int],
    val_videos: int,
    static_images: int,
    config: SynthConfig,
) -> None:
    """Check every argument and the output folder before anything is written."""

    def whole(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        return int(value)

    if whole(videos, "--videos") < 1:
        raise UserError(f"--videos {videos}: need at least 1 training video")
    if whole(frames, "--frames") < 2:
        raise UserError(
            f"--frames {frames}: need at least 2 frames per video "
            "(two-shot training labels two frames of each)"
        )
    if whole(val_videos, "--val-videos") < 0:
        raise UserError(f"--val-videos {val_videos}: must be 0 or more")
    if whole(static_images, "--static-images") < 0:
        raise UserError(f"--static-images {static_images}: must be 0 or more")
    if len(size) != 2:
        raise UserError(f"--size {size}: expected two numbers, H W")
    height, width = whole(size[0], "--size H"), whole(size[1], "--size W")
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise UserError(
            f"--size {height} {width}: each side must be {MIN_SIDE}..{MAX_SIDE} "
            "pixels (smaller frames leave objects only a few pixels)"
        )
    if len(objects) != 2:
        raise UserError(f"--objects {objects}: expected two numbers, MIN MAX")
    lo, hi = whole(objects[0], "--objects MIN"), whole(objects[1], "--objects MAX")
    if lo < 1:
        raise UserError(f"--objects {lo} {hi}: every video needs at least 1 object")
    if lo > hi:
        raise UserError(f"--objects {lo} {hi}: MIN is larger than MAX")
    if hi > MAX_OBJECTS:
        raise UserError(f"--objects {lo} {hi}: at most {MAX_OBJECTS} objects (palette indices)")
    config.validate()
    # Frame 0 must show every object: their smallest possible discs must fit in the frame.
    smallest = math.pi * (config.object_size[0] * min(height, width)) ** 2
    if hi * smallest > 0.6 * height * width:
        raise UserError(
            f"--objects {lo} {hi}: {hi} objects of at least {config.object_size[0]:g} "
            f"x the short side cannot all be visible in a {height}x{width} frame; "
            "use fewer objects, a larger --size or a smaller object_size"
        )
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not is_synth_output(out):
            raise UserError(
                f"--out {out}: folder is not empty and is not a previous "
                f"'twoshot synth' output (no {MARKER_FILE}); choose another folder"
            )


def is_synth_output(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` holds a dataset written by this generator (so it may be replaced)."""
    marker = Path(folder) / MARKER_FILE
    try:
        with open(marker, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR_NAME


def generate_or_reuse(
    out: str | os.PathLike[str],
    videos: int,
    frames: int,
    size: tuple[int, int],
    objects: tuple[int, int],
    seed: int,
    val_videos: int,
    static_images: int,
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Generate the dataset (default difficulty) in ``out`` unless it already holds one made
    with exactly these arguments, which is reused. Returns True if it was generated.

    UserError naming the marker file and the differing arguments if ``out`` holds a dataset
    made with others: a run on it would not be the one asked for.
    """
    wanted = {
        "arguments": {
            "videos": videos,
            "frames": frames,
            "size": list(size),
            "objects": list(objects),
            "seed": seed,
            "val_videos": val_videos,
            "static_images": static_images,
        },
        "config": SynthConfig().to_dict(),
    }
    if not is_synth_output(out):
        generate_dataset(
            out,
            videos=videos,
            frames=frames,
            size=size,
            objects=objects,
            seed=seed,
            val_videos=val_videos,
            static_images=static_images,
            progress=progress,
        )
        return True
    from twoshot.config import config_differences, describe_differences

    marker = Path(out) / MARKER_FILE
    changed = config_differences(json.loads(marker.read_text(encoding="utf-8")), wanted)
    if changed:
        raise UserError(
            f"{marker}: {out} holds videos generated with other arguments "
            f"({describe_differences(changed)}); "
            "use another output folder, or delete it to generate them again"
        )
    return False


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one item: independent of how many other items are made."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, _SPLIT_CODES[split], index])
    )


def _write_static_mask(path: Path, mask: np.ndarray) -> None:
    """Write a 0/255 single-channel ('L') PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(mask)).save(tmp, format="PNG")


def _write_frame(path: Path, rgb: np.ndarray, quality: int) -> None:
    """Write one JPEG frame (via twoshot.data.masks.write_frame: atomic, Pillow)."""
    write_frame(path, rgb, quality=quality)


def _render(
    seed: int,
    split: str,
    index: int,
    frames: int,
    size: tuple[int, int],
    objects: tuple[int, int],
    config: SynthConfig,
) -> RenderedVideo:
    """Render one item (video or static image), turning a layout failure into a UserError."""
    rng = _rng(seed, split, index)
    count = int(rng.integers(objects[0], objects[1] + 1))
    try:
        return make_video(rng, frames, size[0], size[1], count, config)
    except PlacementError as exc:
        raise UserError(f"{exc}; use fewer --objects, a larger --size or a smaller object_size") from None


def _shares(videos: list[RenderedVideo]) -> dict[str, float]:
    """Occlusion / out-of-frame / absence shares over all object-frames (see SynthSummary)."""
    area = np.concatenate([v.area.ravel() for v in videos]) if videos else np.zeros(0)
    inside = np.concatenate([v.in_frame.ravel() for v in videos]) if videos else np.zeros(0)
    visible = np.concatenate([v.visible.ravel() for v in videos]) if videos else np.zeros(0)
    total = max(1, area.size)
    occluded = (inside > 0) & (visible < 0.9 * inside)
    out_of_frame = inside < 0.9 * area
    return {
        "object_frames": int(area.size),
        "occluded": round(float(occluded.sum()) / total, 4),
        "out_of_frame": round(float(out_of_frame.sum()) / total, 4),
        "absent": round(float((visible == 0).sum()) / total, 4),
    }


def generate_dataset(
    out: str | os.PathLike[str],
    videos: int = 40,
    frames: int = 24,
    size: tuple[int, int] = (96, 96),
    objects: tuple[int, int] = (1, 3),
    seed: int = 0,
    val_videos: int = 10,
    static_images: int = 200,
    config: SynthConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> SynthSummary:
    """Write a generated DAVIS-2017-layout dataset (and static pairs) to ``out``.

    videos / val_videos: number of training / validation videos (names ``train0000`` ...,
    ``val0000`` ...). frames: frames per video (>= 2). size: (H, W). objects: (MIN, MAX)
    annotated objects per video. static_images: number of static pretraining pairs.
    config: difficulty knobs (default :class:`SynthConfig`). progress: called with a short
    line after each video.

    Everything is checked first (UserError, nothing written); the dataset is then built in
    a temporary folder next to ``out`` and renamed into place, replacing a previous synth
    output there. Returns a :class:`SynthSummary`.
    """
    config = config if config is not None else SynthConfig()
    out = Path(out)
    size = tuple(size)  # type: ignore[assignment]
    objects = tuple(objects)  # type: ignore[assignment]
    _validate(out, videos, frames, size, objects, val_videos, static_images, config)
    size = (int(size[0]), int(size[1]))
    objects = (int(objects[0]), int(objects[1]))
    start = time.perf_counter()
    names = {
        "train": [f"train{i:04d}" for i in range(videos)],
        "val": [f"val{i:04d}" for i in range(val_videos)],
    }
    rendered: list[RenderedVideo] = []
    per_video: dict[str, dict[str, Any]] = {}
    files = 0
    threads = cv2.getNumThreads()
    # Frames are tiny: OpenCV's thread pool costs more than it saves, and the brief is one core.
    cv2.setNumThreads(1)
    try:
        with atomic_dir(out) as tmp:
            for split in ("train", "val"):
                for index, name in enumerate(names[split]):
                    video = _render(seed, split, index, frames, size, objects, config)
                    jpeg_dir = tmp / "JPEGImages" / "480p" / name
                    mask_dir = tmp / "Annotations" / "480p" / name
                    jpeg_dir.mkdir(parents=True)
                    mask_dir.mkdir(parents=True)
                    for t in range(frames):
                        _write_frame(jpeg_dir / f"{t:05d}.jpg", video.frames[t], config.jpeg_quality)
                        write_mask(mask_dir / f"{t:05d}.png", video.labels[t])
                    files += 2 * frames
                    n = video.area.shape[1]
                    per_video[name] = {
                        "split": split,
                        "objects": n,
                        "absent_frames": {
                            str(i + 1): [int(t) for t in np.flatnonzero(video.visible[:, i] == 0)]
                            for i in range(n)
                            if np.any(video.visible[:, i] == 0)
                        },
                    }
                    # Keep only the counts for the statistics, not the pixels.
                    rendered.append(
                        RenderedVideo(
                            video.frames[:0], video.labels[:0], video.area, video.in_frame, video.visible
                        )
                    )
                    if progress is not None:
                        progress(f"{split} {name}: {n} objects, {frames} frames")
            sets = tmp / "ImageSets" / "2017"
            sets.mkdir(parents=True)
            for split in ("train", "val"):
                with atomic_open(sets / f"{split}.txt", "w", encoding="utf-8") as handle:
                    handle.write("".join(f"{name}\n" for name in names[split]))
            files += 2
            if static_images:
                static_dir = tmp / "static"
                static_dir.mkdir()
                for index in range(static_images):
                    image = _render(seed, "static", index, 1, size, (1, 1), config)
                    _write_frame(static_dir / f"{index:05d}.jpg", image.frames[0], config.jpeg_quality)
                    _write_static_mask(
                        static_dir / f"{index:05d}.png",
                        np.where(image.labels[0] > 0, 255, 0).astype(np.uint8),
                    )
                    files += 2
                if progress is not None:
                    progress(f"static: {static_images} images")
            stats = _shares(rendered)
            # No timings or absolute paths here: the same arguments must give the same bytes.
            meta = {
                "generator": GENERATOR_NAME,
                "format": FORMAT_VERSION,
                "arguments": {
                    "videos": videos,
                    "frames": frames,
                    "size": list(size),
                    "objects": list(objects),
                    "seed": seed,
                    "val_videos": val_videos,
                    "static_images": static_images,
                },
                "config": config.to_dict(),
                "static_mask_values": [0, 255],
                "stats": stats,
                "videos": per_video,
            }
            with atomic_open(tmp / MARKER_FILE, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=1)
                handle.write("\n")
            files += 1
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the dataset ({exc})") from exc
    finally:
        cv2.setNumThreads(threads)
    return SynthSummary(
        out=out,
        train=names["train"],
        val=names["val"],
        frames=frames,
        size=size,
        static_images=static_images,
        files=files,
        seconds=round(time.perf_counter() - start, 3),
        stats=stats,
    )
