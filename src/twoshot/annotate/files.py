"""What the annotation store reads from disk besides masks: the dataset's videos (listed
here rather than with :func:`twoshot.data.readers.open_dataset`, which requires annotations
for every DAVIS and generic video, while a labeling tool starts from videos that have none;
the listing reuses the folder helpers of :mod:`twoshot.data.folders`), and the sidecar JSONs beside the budget
(object names and colours, the last suggested frames)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twoshot.data import folders, readers
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.fsutil import write_json


@dataclass
class Video:
    """One video of the store: its sequence and where its annotation PNGs go."""

    seq: VideoSequence
    mask_dir: Path
    size: tuple[int, int] | None = None  # (H, W), read on first use


def list_videos(data: Path, layout: str, split: str | None) -> list[Video]:
    """The videos of the dataset ``data`` of layout ``layout``, each with its annotation folder
    (which may not exist; where it is comes from the layout's
    :class:`~twoshot.data.folders.DatasetLayout`). UserError for an unknown layout, a missing
    image folder or an empty video file."""
    if layout not in folders.DATASET_LAYOUTS:
        raise UserError(f"unknown dataset layout {layout!r}")
    rules = folders.DATASET_LAYOUTS[layout]
    annotations = rules.annotation_root(data, split)
    if layout == "video":
        mask_dir = annotations
        num = readers.video_frame_count(data)
        if num == 0:
            raise UserError(f"{data}: empty video (no frames decoded)")
        width = max(5, len(str(num - 1)))
        names = [f"{i:0{width}d}" for i in range(num)]
        masks = {int(p.stem): p for p in _pngs(mask_dir) if p.stem.isdigit() and int(p.stem) < num}
        seq = VideoSequence(data.stem, [], names, dict(sorted(masks.items())), video_file=data)
        return [Video(seq, mask_dir)]
    if layout == "youtube":
        return [Video(seq, annotations / seq.name) for seq in readers.open_dataset("youtube", data, split)]
    images = rules.image_root(data, split)
    if not images.is_dir():
        raise UserError(f"{images}: folder is missing")
    names = sorted(
        (p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=folders.natural_key,
    )
    if split is not None and layout == "davis":
        names = folders.read_davis_split(data, split)
    out = []
    for name in names:
        frames = folders.list_frames(images / name)
        frame_names = [p.stem for p in frames]
        masks = folders.match_masks(annotations / name, frame_names, required=False)
        out.append(Video(VideoSequence(name, frames, frame_names, masks), annotations / name))
    return out


def load_objects(path: Path) -> dict[str, dict[int, dict[str, str]]]:
    """Object names and colours per video from the sidecar JSON (empty if none)."""

    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(video): {int(k): {"name": str(v["name"]), "color": str(v["color"])} for k, v in objs.items()}
            for video, objs in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: cannot read object names ({exc})") from exc


def load_suggestions(path: Path, videos: dict[str, Video]) -> dict[str, dict]:
    """The last suggested frames per video {video: {strategy, k, frames}} (empty if none);
    entries naming unknown videos or frames are left out (the dataset may have changed)."""

    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for video, entry in raw.items():
            if video in videos:
                total = videos[video].seq.num_frames
                frames = [int(f) for f in entry["frames"] if 0 <= int(f) < total]
                out[str(video)] = {"strategy": str(entry["strategy"]), "k": int(entry["k"]), "frames": frames}
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: cannot read suggested frames ({exc})") from exc


def save_objects(path: Path, objects: dict[str, dict[int, dict[str, str]]]) -> None:
    """Write the object names and colours sidecar (videos without objects left out)."""
    write_json(
        path, {video: {str(k): v for k, v in sorted(objs.items())} for video, objs in objects.items() if objs}
    )


def _pngs(folder: Path) -> Sequence[Path]:
    """PNG files of a folder (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
