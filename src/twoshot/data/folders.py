"""Dataset folder layouts -> VideoSequence: DAVIS 2017, YouTube-VOS and generic folders,
and the listing helpers they share (natural order, frame and mask matching).

Opening a layout only lists folders and parses small text/JSON files: no annotation PNG is
opened. Problems a user can fix raise :class:`~twoshot.errors.UserError` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError

DAVIS_RESOLUTIONS: tuple[str, ...] = ("480p", "Full-Resolution")
FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------------------------
# Shared listing helpers


@dataclass(frozen=True)
class DatasetLayout:
    """The rules of one on-disk dataset layout that commands, recipes, the pipeline and the
    annotation app need beyond opening it (:func:`twoshot.data.readers.open_dataset`): where
    its frames and annotations are, its default splits, its annotation stride.

    name: ``davis`` | ``youtube`` | ``generic`` | ``video``; annotation_stride: every how
    many frames a training video is annotated (YouTube-VOS: 5); train_split / eval_split:
    the splits commands default to (None: the root itself); split_folders: a split is a
    sub-folder of the root (YouTube-VOS, whose default split is taken only where that folder
    holds ``meta.json``, and generic folders; a DAVIS split is a list of videos).
    """

    name: str
    annotation_stride: int = 1
    train_split: str | None = None
    eval_split: str | None = None
    split_folders: bool = False

    def default_split(self, root: str | Path, training: bool) -> str | None:
        """The split a command reads from ``root`` when none is given."""
        split = self.train_split if training else self.eval_split
        if split is not None and self.split_folders and not (Path(root) / split / "meta.json").is_file():
            return None
        return split

    def split_root(self, root: str | Path, split: str | None) -> Path:
        """The folder holding ``split``'s JPEGImages / Annotations (``root`` itself unless
        splits are sub-folders)."""
        return Path(root) / split if self.split_folders and split else Path(root)

    def image_root(self, root: str | Path, split: str | None) -> Path:
        """The folder of per-video frame folders of ``split`` under ``root`` (DAVIS: 480p)."""
        base = self.split_root(root, split) / "JPEGImages"
        return base / "480p" if self.name == "davis" else base

    def annotation_root(self, root: str | Path, split: str | None) -> Path:
        """The folder of per-video annotation folders of ``split`` under ``root`` (DAVIS:
        480p); for a video file ``root``, the folder of its masks, ``<stem>_masks`` beside it."""
        if self.name == "video":
            return Path(root).with_name(f"{Path(root).stem}_masks")
        base = self.split_root(root, split) / "Annotations"
        return base / "480p" if self.name == "davis" else base


DATASET_LAYOUTS: dict[str, DatasetLayout] = {
    "davis": DatasetLayout("davis", train_split="train", eval_split="val"),
    "youtube": DatasetLayout(
        "youtube", annotation_stride=5, train_split="train", eval_split="valid", split_folders=True
    ),
    "generic": DatasetLayout("generic", split_folders=True),
    "video": DatasetLayout("video"),
}
"""Every layout :func:`twoshot.data.readers.open_dataset` reads, by name."""


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders digit runs by value ("f2" < "f10"); DAVIS names sort as before."""
    # re.split with a capturing group alternates text, digits, text ...: types never clash.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes`` (case-insensitive), hidden ones skipped."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: natural_key(p.stem),
    )


def list_frames(folder: Path, suffixes: Sequence[str] = FRAME_SUFFIXES) -> list[Path]:
    """Image files of a video folder in temporal order; UserError if missing, empty or ambiguous."""
    if not folder.is_dir():
        raise UserError(f"{folder}: video folder is missing")
    frames = list_files(folder, suffixes)
    if not frames:
        raise UserError(f"{folder}: empty video (no {'/'.join(suffixes)} frames)")
    stems = [p.stem for p in frames]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise UserError(f"{folder}: two frame files named {dup}.* (e.g. .jpg and .png)")
    return frames


def match_masks(ann_folder: Path, frame_names: list[str], *, required: bool) -> dict[int, Path]:
    """Map frame index -> annotation PNG of ``ann_folder`` (listing only, nothing is opened).

    A PNG whose stem is not a frame name is an error (its frame is missing); with
    ``required`` an absent or empty folder is an error too.
    """
    if not ann_folder.is_dir():
        if required:
            raise UserError(f"{ann_folder}: annotation folder is missing")
        return {}
    index = {name: i for i, name in enumerate(frame_names)}
    mask_paths: dict[int, Path] = {}
    for png in list_files(ann_folder, (".png",)):
        if png.stem not in index:
            raise UserError(
                f"{png}: annotation has no matching frame {png.stem}.* in the "
                "JPEGImages folder (frame missing)"
            )
        mask_paths[index[png.stem]] = png
    if required and not mask_paths:
        raise UserError(f"{ann_folder}: no annotation PNG for this video")
    return dict(sorted(mask_paths.items()))


def check_no_gaps(folder: Path, frames: list[Path]) -> None:
    """DAVIS frames are numbered consecutively: a gap means a frame file is missing."""
    stems = [p.stem for p in frames]
    if not all(s.isdigit() for s in stems) or len(stems) < 2:
        return
    numbers = [int(s) for s in stems]
    # gcd of steps allows layouts sampled every k-th frame (YouTube-VOS uses 5).
    step = 0
    for a, b in zip(numbers, numbers[1:]):
        step = math.gcd(step, b - a)
    for a, b in zip(numbers, numbers[1:]):
        if b - a != step:
            width = len(stems[0])
            raise UserError(
                f"{folder}: frame {a + step:0{width}d} is missing "
                f"(frames jump from {a:0{width}d} to {b:0{width}d})"
            )


def folder_sequence(
    frames_folder: Path,
    masks_folder: Path,
    suffixes: Sequence[str] = FRAME_SUFFIXES,
    *,
    gapless: bool = False,
) -> VideoSequence:
    """One video of a folder layout: its frames (``suffixes``; with ``gapless``, numbered without
    gaps) and the masks of ``masks_folder`` matched to them by name (at least one required)."""
    frames = list_frames(frames_folder, suffixes)
    if gapless:
        check_no_gaps(frames_folder, frames)
    frame_names = [p.stem for p in frames]
    return VideoSequence(
        name=frames_folder.name,
        frame_paths=frames,
        frame_names=frame_names,
        mask_paths=match_masks(masks_folder, frame_names, required=True),
    )


# --------------------------------------------------------------------------------------------
# DAVIS 2017


def open_davis(root: Path, split: str | None, resolution: str) -> list[VideoSequence]:
    """DAVIS: JPEGImages/<res>/<video>/00000.jpg, Annotations/<res>/<video>/00000.png."""
    if resolution not in DAVIS_RESOLUTIONS:
        raise UserError(f"unknown DAVIS resolution {resolution!r}; expected {' or '.join(DAVIS_RESOLUTIONS)}")
    images = root / "JPEGImages" / resolution
    annotations = root / "Annotations" / resolution
    if not images.is_dir():
        raise UserError(f"{images}: folder is missing (not a DAVIS {resolution} root)")
    if split is None:
        names = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        names = read_davis_split(root, split)
    if not names:
        raise UserError(f"{images}: no videos")
    return [
        folder_sequence(images / name, annotations / name, (".jpg", ".jpeg"), gapless=True) for name in names
    ]


def read_davis_split(root: Path, split: str) -> list[str]:
    """Video names of ``ImageSets/2017/<split>.txt`` (or of ``split`` given as a file path)."""
    sets = root / "ImageSets" / "2017"
    path = Path(split) if split.endswith(".txt") else sets / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
        raise UserError(
            f"{path}: split file is missing" + (f" (available: {', '.join(have)})" if have else "")
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read split file ({exc})") from exc
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise UserError(f"{path}: split file lists no video")
    return names


# --------------------------------------------------------------------------------------------
# YouTube-VOS


def open_youtube(root: Path, split: str | None) -> list[VideoSequence]:
    """YouTube-VOS: <split>/JPEGImages/<video>/*.jpg, <split>/Annotations/..., <split>/meta.json."""
    base = root if split is None else root / split
    if not base.is_dir():
        have = sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())
        raise UserError(
            f"{base}: split folder is missing" + (f" (available: {', '.join(have)})" if have else "")
        )
    split_name = split if split is not None else root.name
    # A submission holds exactly the frames meta.json lists, except on training splits.
    is_train = split_name.lower().startswith("train")
    meta = read_meta(base / "meta.json")
    sequences = []
    for name in sorted(meta):
        frames = list_frames(base / "JPEGImages" / name, (".jpg", ".jpeg"))
        frame_names = [p.stem for p in frames]
        index = {stem: i for i, stem in enumerate(frame_names)}
        first: dict[int, int] = {}
        listed: set[int] = set()
        for obj_id, obj_frames in meta[name].items():
            for frame in obj_frames:
                if frame not in index:
                    raise UserError(
                        f"{base / 'meta.json'}: video {name} object {obj_id} lists "
                        f"frame {frame}, but {base / 'JPEGImages' / name / frame}.jpg "
                        "is missing"
                    )
                listed.add(index[frame])
            if obj_frames:
                first[obj_id] = min(index[f] for f in obj_frames)
        ann_folder = base / "Annotations" / name
        mask_paths = match_masks(ann_folder, frame_names, required=not is_train)
        if not is_train:
            # The given masks are inputs of inference: each object's first frame must have one.
            for obj_id, first_index in sorted(first.items()):
                if first_index not in mask_paths:
                    raise UserError(
                        f"{ann_folder / frame_names[first_index]}.png: missing; meta.json "
                        f"says object {obj_id} first appears in this frame"
                    )
        sequences.append(
            VideoSequence(
                name=name,
                frame_paths=frames,
                frame_names=frame_names,
                mask_paths=mask_paths,
                object_first_frame=dict(sorted(first.items())),
                frames_to_save=None if is_train else sorted(listed),
            )
        )
    return sequences


def read_meta(path: Path) -> dict[str, dict[int, list[str]]]:
    """Parse meta.json into {video: {object_id: [frame names]}}; UserError if malformed."""
    if not path.is_file():
        raise UserError(f"{path}: meta.json is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read meta.json ({exc})") from exc
    videos = raw.get("videos") if isinstance(raw, dict) else None
    if not isinstance(videos, dict):
        raise UserError(f'{path}: expected {{"videos": {{video: {{"objects": ...}}}}}}')
    meta: dict[str, dict[int, list[str]]] = {}
    for name, entry in videos.items():
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objects, dict):
            raise UserError(f'{path}: video {name} has no "objects" mapping')
        meta[name] = {}
        for key, obj in objects.items():
            frames = obj.get("frames") if isinstance(obj, dict) else None
            if not (key.isdigit() and 0 < int(key) < 256):
                raise UserError(f"{path}: video {name} object id {key!r} is not an integer 1..255")
            if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                raise UserError(f'{path}: video {name} object {key} has no "frames" list of names')
            # Frame names may come with an extension in hand-made files; ids are the stems.
            meta[name][int(key)] = [Path(f).stem for f in frames]
    return meta


# --------------------------------------------------------------------------------------------
# Generic folders


def open_generic(root: Path, split: str | None) -> list[VideoSequence]:
    """Generic: JPEGImages/<video>/*.jpg|png + Annotations/<video>/*.png (first-appearance frames)."""
    base = root if split is None else root / split
    images = base / "JPEGImages"
    if not images.is_dir():
        raise UserError(f"{images}: folder is missing (generic layout needs JPEGImages/<video>/)")
    names = sorted(
        (p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key
    )
    if not names:
        raise UserError(f"{images}: no video folders")
    return [folder_sequence(images / name, base / "Annotations" / name) for name in names]
