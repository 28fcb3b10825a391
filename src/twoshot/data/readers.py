"""Dataset readers: DAVIS 2017, YouTube-VOS, generic folders and video files -> VideoSequence.

Opening a dataset only lists folders and parses small text/JSON files: it never opens an
annotation PNG. Masks are read later, and only for the frames a caller asks for
(:func:`load_annotations`), so training from a label budget never touches the PNG of an
unlabeled frame (DESIGN.md section 2). Problems a user can fix raise
:class:`~twoshot.errors.UserError` naming the file and what is wrong.

Entry points:

- :func:`open_dataset` (``layout`` in ``davis``, ``youtube``, ``generic``, ``video``), or
  :func:`detect_layout` to guess the layout of a folder;
- :func:`load_frames` -> uint8 ``[T, H, W, 3]`` (PyAV for video files);
- :func:`load_annotations` -> ``({frame_index: uint8 [H, W]}, palette)``;
- :func:`reference_annotations`: the masks semi-supervised inference is given (each object on
  the frame where it first appears);
- :func:`frame_size`, :func:`check_sequence`.

The folder layouts themselves are read in :mod:`twoshot.data.folders`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from twoshot.data.folders import (
    DATASET_LAYOUTS,
    DAVIS_RESOLUTIONS,
    list_files,
    open_davis,
    open_generic,
    open_youtube,
)
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_frame, read_mask
from twoshot.errors import UserError

LAYOUTS: tuple[str, ...] = tuple(DATASET_LAYOUTS)
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")

PathLike = str | os.PathLike[str]
MaskSource = Mapping[int, PathLike] | PathLike


# --------------------------------------------------------------------------------------------
# Entry point


def open_dataset(
    layout: str,
    root: PathLike,
    split: str | None = None,
    *,
    resolution: str = "480p",
    masks: MaskSource | None = None,
    videos: Sequence[str] | None = None,
) -> list[VideoSequence]:
    """Read a dataset layout into VideoSequences (sorted by name for folder layouts).

    layout: ``davis`` | ``youtube`` | ``generic`` | ``video``.
    root: dataset root folder (for ``video``: the video file).
    split: DAVIS: ``train`` / ``val`` / any ``ImageSets/2017/<split>.txt``, or a path to such a
        list (None = every video folder); YouTube-VOS: ``train`` / ``valid`` / ... sub-folder
        of root (None = root itself holds ``meta.json``); generic: optional sub-folder.
    resolution: DAVIS only, ``480p`` or ``Full-Resolution``.
    masks: video only: {frame_index: png} or a folder of ``<frame_index>.png``.
    videos: keep only these video names (UserError if one is missing).
    Raises UserError for a missing folder/split file/video, an empty video, or an annotation
    PNG without a frame. No annotation PNG is opened.
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such {'file' if layout == 'video' else 'folder'}")
    if layout == "davis":
        sequences = open_davis(root, split, resolution)
    elif layout == "youtube":
        sequences = open_youtube(root, split)
    elif layout == "generic":
        sequences = open_generic(root, split)
    else:
        if masks is None:
            raise UserError(
                f"{root}: a video file needs masks for at least one frame "
                "(a {frame_index: png} mapping or a folder of <frame_index>.png)"
            )
        sequences = [open_video_file(root, masks)]
    if videos is not None:
        by_name = {seq.name: seq for seq in sequences}
        missing = [name for name in videos if name not in by_name]
        if missing:
            raise UserError(f"{root}: no video named {', '.join(missing)}")
        sequences = [by_name[name] for name in videos]
    return sequences


def detect_layout(root: PathLike, split: str | None = None) -> str:
    """Guess the layout of ``root``: ``video`` (a file), ``davis``, ``youtube`` or ``generic``.

    DAVIS has ``JPEGImages/480p`` (or ``Full-Resolution``); YouTube-VOS has ``meta.json`` in
    root or in ``root/<split>``; generic has ``JPEGImages``. UserError if none fits.
    """
    root = Path(root)
    if root.is_file():
        return "video"
    if any((root / "JPEGImages" / res).is_dir() for res in DAVIS_RESOLUTIONS):
        return "davis"
    if (root / "meta.json").is_file() or (split and (root / split / "meta.json").is_file()):
        return "youtube"
    if (root / "JPEGImages").is_dir() or (split and (root / split / "JPEGImages").is_dir()):
        return "generic"
    raise UserError(
        f"{root}: not a DAVIS, YouTube-VOS or generic dataset folder (no "
        "JPEGImages/480p, meta.json or JPEGImages found); pass the layout explicitly (--dataset)"
    )


# --------------------------------------------------------------------------------------------
# Video files (PyAV)


def open_video_file(path: PathLike, masks: MaskSource, name: str | None = None) -> VideoSequence:
    """One video file (mp4, avi ...) plus mask PNGs -> VideoSequence.

    masks: {frame_index: png path} or a folder of PNGs named by (zero-padded) frame index,
    e.g. ``00000.png``. The video is decoded once to count its frames (containers' frame
    counts are often missing or wrong); frame names are ``00000`` ... Raises UserError for an
    undecodable or empty video, a mask index out of range, or a missing mask file.
    """
    path = Path(path)
    num_frames = video_frame_count(path)
    if num_frames == 0:
        raise UserError(f"{path}: empty video (no frames decoded)")
    if isinstance(masks, Mapping):
        mask_paths = {int(k): Path(v) for k, v in masks.items()}
    else:
        folder = Path(masks)
        if not folder.is_dir():
            raise UserError(f"{folder}: mask folder is missing")
        mask_paths = {}
        for png in list_files(folder, (".png",)):
            if not png.stem.isdigit():
                raise UserError(f"{png}: mask name must be a frame index such as 00000.png")
            mask_paths[int(png.stem)] = png
    if not mask_paths:
        raise UserError(f"{masks}: no mask PNG given for {path}")
    for index, png in sorted(mask_paths.items()):
        if not 0 <= index < num_frames:
            raise UserError(f"{png}: mask for frame {index}, but {path} has {num_frames} frames")
        if not png.is_file():
            raise UserError(f"{png}: mask file is missing")
    width = max(5, len(str(num_frames - 1)))
    return VideoSequence(
        name=name or path.stem,
        frame_paths=[],
        frame_names=[f"{i:0{width}d}" for i in range(num_frames)],
        mask_paths=dict(sorted(mask_paths.items())),
        video_file=path,
    )


def video_frame_count(path: PathLike) -> int:
    """Frames of the video file ``path``, decoded once per file version (cached by path,
    modification time and size)."""
    return _count_video_frames(str(path), *_stat_key(Path(path)))


def _stat_key(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) so cached probes notice a rewritten file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"{path}: cannot read video file ({exc})") from exc
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=64)
def _count_video_frames(path: str, mtime_ns: int, size: int) -> int:
    """Decode the whole video once and count frames (cached per file version)."""
    import av  # local: PyAV is only needed for video-file sources

    count = 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                count += 1
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode video ({exc})") from exc
    return count


def _video_size(path: Path) -> tuple[int, int]:
    """(H, W) of a video file's first video stream, from its header."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            ctx = container.streams.video[0].codec_context
            return int(ctx.height), int(ctx.width)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read video ({exc})") from exc


def _decode_video(path: Path, wanted: set[int], num_frames: int) -> dict[int, np.ndarray]:
    """Decode frames ``wanted`` (indices) as RGB uint8 [H, W, 3], stopping after the last one."""
    import av

    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    out[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode video ({exc})") from exc
    if len(out) != len(wanted):
        missing = sorted(wanted - set(out))
        raise UserError(
            f"{path}: decoded fewer frames than the {num_frames} counted when opened "
            f"(frame {missing[0]} missing); was the file changed?"
        )
    return out


# --------------------------------------------------------------------------------------------
# Loading pixels


def _indices(seq: VideoSequence, indices: Sequence[int] | None) -> list[int]:
    """Validate frame indices of ``seq`` (None = all)."""
    if indices is None:
        return list(range(seq.num_frames))
    out = [int(i) for i in indices]
    for i in out:
        if not 0 <= i < seq.num_frames:
            raise IndexError(f"video {seq.name}: frame index {i} out of range 0..{seq.num_frames - 1}")
    return out


def frame_size(seq: VideoSequence, index: int = 0) -> tuple[int, int]:
    """(H, W) of frame ``index`` of ``seq``, read from the file header (no pixel decoding)."""
    if seq.video_file is not None:
        return _video_size(seq.video_file)
    path = seq.frame_paths[index]
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from exc
    return height, width


def load_frames(seq: VideoSequence, indices: Sequence[int] | None = None) -> np.ndarray:
    """Read frames of ``seq`` as RGB uint8 ``[T, H, W, 3]`` (``T = len(indices)``, all if None).

    Image folders are read with Pillow, video files decoded with PyAV (up to the last wanted
    frame). Raises UserError for an unreadable frame or frames of different sizes.
    """
    wanted = _indices(seq, indices)
    if not wanted:
        raise ValueError(f"video {seq.name}: no frame index given")
    if seq.video_file is not None:
        decoded = _decode_video(seq.video_file, set(wanted), seq.num_frames)
        return np.stack([decoded[i] for i in wanted])
    arrays: list[np.ndarray] = []
    for i in wanted:
        rgb = read_frame(seq.frame_paths[i])
        if arrays and rgb.shape != arrays[0].shape:
            raise UserError(
                f"{seq.frame_paths[i]}: frame is {rgb.shape[1]}x{rgb.shape[0]} but "
                f"{seq.frame_paths[wanted[0]].name} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; all frames of a video "
                "must have the same size"
            )
        arrays.append(rgb)
    return np.stack(arrays)


def load_annotations(
    seq: VideoSequence, frames: Sequence[int] | None = None
) -> tuple[dict[int, np.ndarray], bytes | None]:
    """Read the annotation PNGs of frames ``frames`` (None = every frame in ``seq.mask_paths``).

    Returns ({frame_index: labels uint8 [H, W]}, palette bytes or None when every PNG is
    grey-level). Only the requested PNGs are opened. Raises UserError when a requested frame
    has no annotation, a PNG is unreadable or RGB, its size differs from its frame, or it
    lacks an object that meta.json says first appears in that frame.
    """
    wanted = sorted(seq.mask_paths) if frames is None else _indices(seq, frames)
    out: dict[int, np.ndarray] = {}
    palette: bytes | None = None
    size: tuple[int, int] | None = None
    for i in wanted:
        if i not in seq.mask_paths:
            raise UserError(f"video {seq.name}: frame {seq.frame_names[i]} has no annotation PNG")
        path = seq.mask_paths[i]
        if not path.is_file():
            raise UserError(f"{path}: annotation PNG is missing")
        labels, pal = read_mask(path)
        # A video file's frames all share one size; image frames are checked one by one.
        expected = size if (size is not None and seq.video_file is not None) else frame_size(seq, i)
        size = expected
        if labels.shape != expected:
            raise UserError(
                f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but its frame "
                f"is {expected[1]}x{expected[0]}"
            )
        _check_first_objects(seq, i, labels, path)
        out[i] = labels
        if palette is None and pal is not None:
            palette = pal
    return out, palette


def _check_first_objects(seq: VideoSequence, index: int, labels: np.ndarray, path: Path) -> None:
    """UserError if an object meta.json says first appears in frame ``index`` is absent."""
    if not seq.object_first_frame:
        return
    expected = [obj for obj, first in seq.object_first_frame.items() if first == index]
    if not expected:
        return
    present = set(np.unique(labels).tolist())
    absent = [obj for obj in expected if obj not in present]
    if absent:
        raise UserError(
            f"{path}: object id {', '.join(map(str, absent))} is listed in meta.json "
            "as first appearing in this frame but is absent from its annotation"
        )


def reference_annotations(seq: VideoSequence) -> tuple[dict[int, np.ndarray], bytes | None, dict[int, int]]:
    """The masks a semi-supervised run is given: each object on the frame where it first appears.

    Returns (``{frame_index: labels uint8 [H, W]}`` holding in each frame only the objects
    that first appear there (others set to 0), palette, ``{object_id: first frame index}``).
    Uses ``seq.object_first_frame`` when the layout gives it (YouTube-VOS, reading only those
    frames); otherwise reads the annotations in frame order (for DAVIS with dense ground
    truth every object is found in frame 0 and later frames add nothing).
    """
    if seq.object_first_frame:
        first = dict(seq.object_first_frame)
        loaded, palette = load_annotations(seq, sorted(set(first.values())))
    else:
        loaded, palette = load_annotations(seq)
        first = {}
        for index, labels in sorted(loaded.items()):
            for obj in np.unique(labels).tolist():
                if obj != 0 and obj not in first:
                    first[obj] = index
    given: dict[int, np.ndarray] = {}
    for index in sorted(set(first.values())):
        objs = [obj for obj, f in first.items() if f == index]
        given[index] = np.where(np.isin(loaded[index], objs), loaded[index], 0).astype(np.uint8)
    return given, palette, dict(sorted(first.items()))


def check_sequence(seq: VideoSequence, frames: Sequence[int] | None = None) -> None:
    """Validate ``seq`` thoroughly: every frame readable and of one size, every annotation in
    ``frames`` (None = all of ``mask_paths``) valid. Raises UserError naming the bad file.

    Slow on big datasets (reads every frame header and PNG); meant for a check command.
    """
    if seq.video_file is None:
        first = frame_size(seq, 0)
        for i in range(1, seq.num_frames):
            size = frame_size(seq, i)
            if size != first:
                raise UserError(
                    f"{seq.frame_paths[i]}: frame is {size[1]}x{size[0]} but "
                    f"{seq.frame_paths[0].name} is {first[1]}x{first[0]}"
                )
    load_annotations(seq, frames)
