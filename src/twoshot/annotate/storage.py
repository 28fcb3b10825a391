"""The opened dataset as the annotation app sees it: videos, frames, masks, label budget.

Every edit is written at once, atomically, in the dataset's own format: an indexed PNG with
the dataset's palette at the frame's size (``twoshot.data.masks.write_mask``) and the label
budget JSON in the reference format (``twoshot.data.budget.save_budget``). A frame is
*labeled* when the budget lists it; annotation PNGs on disk that the budget does not list
(e.g. DAVIS's dense ground truth) are shown and can be made labeled by saving them.

Concurrent editors: each mask has a version (a hash of its PNG's bytes); a save names the
version it was based on, and a save based on an older one is refused (:class:`Conflict`),
so two tabs editing one frame cannot silently overwrite each other. One lock serialises all
writes, so the PNG and the budget always agree.

Folder layouts are listed here rather than with :func:`twoshot.data.readers.open_dataset`
because the readers require annotations for every DAVIS and generic video, and a labeling
tool starts from videos that have none; the listing reuses the readers' own helpers.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from twoshot.data import folders, readers
from twoshot.data.budget import (
    STRATEGIES,
    Budget,
    apply_budget,
    frame_entry,
    load_budget,
    make_budget,
    resolve_entries,
    save_budget,
)
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask
from twoshot.data.writers import palette_colors
from twoshot.errors import UserError
from twoshot.fsutil import write_json

THUMB_HEIGHT = 54


class RequestError(Exception):
    """A request the app refuses: an HTTP status (4xx) and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Conflict(RequestError):
    """A save based on a version of the mask that is no longer the one on disk."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


@dataclass
class Video:
    """One video of the store: its sequence and where its annotation PNGs go."""

    seq: VideoSequence
    mask_dir: Path
    size: tuple[int, int] | None = None  # (H, W), read on first use


def default_budget_path(data: Path) -> Path:
    """Where the budget JSON goes when none is named: ``DATA/budget.json``, or
    ``<stem>_budget.json`` beside a video file."""
    return data.with_name(f"{data.stem}_budget.json") if data.is_file() else data / "budget.json"


class AnnotationStore:
    """Videos, frames, masks, objects and the label budget of one dataset on disk.

    data: a DAVIS, YouTube-VOS or generic folder, or a video file (masks then go to
    ``<stem>_masks/<frame index>.png`` beside it, as ``twoshot infer`` reads them).
    kind: the layout (None = detected); split: DAVIS/YouTube-VOS split (None = every video
    folder for DAVIS; for YouTube-VOS the root if it holds meta.json, else ``train``);
    budget: the budget JSON to read and update (None = :func:`default_budget_path`).
    Raises UserError for an unreadable dataset or a budget that names unknown videos or
    frames.
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        kind: str | None = None,
        split: str | None = None,
        budget: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data = Path(data)
        if not self.data.exists():
            raise UserError(f"{self.data}: no such file or folder")
        self.kind = kind or readers.detect_layout(self.data, split or "train")
        if self.kind == "youtube" and split is None and not (self.data / "meta.json").is_file():
            split = "train"  # a YouTube-VOS root: its training videos are the ones to label
        # Every path served or written must resolve inside this folder.
        self.root = (self.data.parent if self.data.is_file() else self.data).resolve()
        self.videos: dict[str, Video] = {v.seq.name: v for v in self._open(split)}
        if not self.videos:
            raise UserError(f"{self.data}: no videos")
        self.budget_path = Path(budget) if budget is not None else default_budget_path(self.data)
        self.objects_path = self.budget_path.with_name(f"{self.budget_path.stem}.objects.json")
        self.labeled: dict[str, set[int]] = {name: set() for name in self.videos}
        if self.budget_path.is_file():
            for name, entries in load_budget(self.budget_path).items():
                if name not in self.videos:
                    raise UserError(f"{self.budget_path}: budget names video {name}, not in {self.data}")
                self.labeled[name] = set(resolve_entries(self.videos[name].seq, entries))
        self.objects: dict[str, dict[int, dict[str, str]]] = self._load_objects()
        self.revision: dict[str, int] = dict.fromkeys(self.videos, 0)
        self.lock = threading.RLock()
        self._thumbs: dict[tuple[str, int], bytes] = {}
        self._decoded: tuple[str, np.ndarray] | None = None  # a video file's frames
        self._palettes: dict[str, bytes] = {}

    # ----------------------------------------------------------------------------------------
    # Opening

    def _open(self, split: str | None) -> list[Video]:
        """The videos of the dataset, each with its annotation folder (which may not exist)."""
        if self.kind == "video":
            mask_dir = self.data.with_name(f"{self.data.stem}_masks")
            num = readers.video_frame_count(self.data)
            if num == 0:
                raise UserError(f"{self.data}: empty video (no frames decoded)")
            width = max(5, len(str(num - 1)))
            names = [f"{i:0{width}d}" for i in range(num)]
            masks = {int(p.stem): p for p in _pngs(mask_dir) if p.stem.isdigit() and int(p.stem) < num}
            seq = VideoSequence(self.data.stem, [], names, dict(sorted(masks.items())), video_file=self.data)
            return [Video(seq, mask_dir)]
        if self.kind == "youtube":
            base = self.data if split is None else self.data / split
            return [
                Video(seq, base / "Annotations" / seq.name)
                for seq in readers.open_dataset("youtube", self.data, split)
            ]
        if self.kind == "davis":
            images = self.data / "JPEGImages" / "480p"
            annotations = self.data / "Annotations" / "480p"
        elif self.kind == "generic":
            base = self.data if split is None else self.data / split
            images, annotations = base / "JPEGImages", base / "Annotations"
        else:
            raise UserError(f"unknown dataset kind {self.kind!r}")
        if not images.is_dir():
            raise UserError(f"{images}: folder is missing")
        names = sorted(
            (p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=folders.natural_key,
        )
        if split is not None and self.kind == "davis":
            names = folders.read_davis_split(self.data, split)
        out = []
        for name in names:
            frames = folders.list_frames(images / name)
            frame_names = [p.stem for p in frames]
            masks = folders.match_masks(annotations / name, frame_names, required=False)
            out.append(Video(VideoSequence(name, frames, frame_names, masks), annotations / name))
        return out

    def _load_objects(self) -> dict[str, dict[int, dict[str, str]]]:
        """Object names and colours per video from the sidecar JSON (empty if none)."""
        import json

        if not self.objects_path.is_file():
            return {}
        try:
            raw = json.loads(self.objects_path.read_text(encoding="utf-8"))
            return {
                str(video): {
                    int(k): {"name": str(v["name"]), "color": str(v["color"])} for k, v in objs.items()
                }
                for video, objs in raw.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{self.objects_path}: cannot read object names ({exc})") from exc

    # ----------------------------------------------------------------------------------------
    # Look-ups (each refuses unknown names and paths outside the dataset)

    def video(self, name: str) -> Video:
        """The video called ``name``; RequestError 404 if the dataset has none."""
        video = self.videos.get(name)
        if video is None:
            raise RequestError(404, f"no video named {name!r} in {self.data}")
        return video

    def check_frame(self, name: str, index: int) -> Video:
        """The video ``name`` after checking that frame ``index`` exists (404 otherwise)."""
        video = self.video(name)
        if not 0 <= index < video.seq.num_frames:
            raise RequestError(404, f"video {name} has no frame {index} (it has {video.seq.num_frames})")
        return video

    def inside(self, path: Path) -> Path:
        """``path`` if it resolves inside the dataset folder (symlinks followed), else 403."""
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise RequestError(403, f"{path} resolves outside the dataset folder {self.root}")
        return path

    def frame_size(self, name: str) -> tuple[int, int]:
        """(H, W) of the video's frames."""
        video = self.video(name)
        if video.size is None:
            video.size = readers.frame_size(video.seq, 0)
        return video.size

    def mask_path(self, name: str, index: int) -> Path:
        """Where frame ``index``'s annotation PNG is (it may not exist), checked inside the dataset."""
        video = self.check_frame(name, index)
        return self.inside(video.mask_dir / f"{video.seq.frame_names[index]}.png")

    def frame_file(self, name: str, index: int) -> Path | None:
        """The image file of a frame (None for a video-file source), checked inside the dataset."""
        video = self.check_frame(name, index)
        return self.inside(video.seq.frame_paths[index]) if video.seq.frame_paths else None

    def frame_rgb(self, name: str, index: int) -> np.ndarray:
        """Frame ``index`` as RGB uint8 [H, W, 3] (a video file is decoded once and kept)."""
        video = self.check_frame(name, index)
        if video.seq.video_file is None:
            return readers.load_frames(video.seq, [index])[0]
        with self.lock:
            if self._decoded is None or self._decoded[0] != name:
                self._decoded = (name, readers.load_frames(video.seq))
            return self._decoded[1][index]

    def frame_jpeg(self, name: str, index: int) -> bytes:
        """A frame encoded as JPEG (for sources that are not image files)."""
        buffer = io.BytesIO()
        Image.fromarray(self.frame_rgb(name, index)).save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()

    def thumbnail(self, name: str, index: int) -> bytes:
        """A small JPEG of a frame for the timeline (cached)."""
        key = (name, index)
        if key not in self._thumbs:
            image = Image.fromarray(self.frame_rgb(name, index))
            width = max(1, round(image.width * THUMB_HEIGHT / image.height))
            buffer = io.BytesIO()
            image.resize((width, THUMB_HEIGHT), Image.Resampling.BILINEAR).save(buffer, format="JPEG")
            self._thumbs[key] = buffer.getvalue()
        return self._thumbs[key]

    def palette(self, name: str) -> bytes:
        """The video's palette: that of its first annotation PNG, else of any in the dataset,
        else DAVIS's (looked up once per video: every save writes it)."""
        if name in self._palettes:
            return self._palettes[name]
        found = DAVIS_PALETTE
        for video in [self.video(name), *self.videos.values()]:
            for path in video.seq.mask_paths.values():
                try:
                    _, palette = read_mask(self.inside(path))
                except (UserError, RequestError):
                    continue
                if palette is not None:
                    found = palette
                    break
            else:
                continue
            break
        self._palettes[name] = found
        return found

    # ----------------------------------------------------------------------------------------
    # Masks

    def read_mask(self, name: str, index: int) -> tuple[np.ndarray, str]:
        """(labels uint8 [H, W], version) of a frame; zeros and version ``""`` without a PNG.
        RequestError 422 for a PNG of the wrong size or an unreadable one."""
        path = self.mask_path(name, index)
        height, width = self.frame_size(name)
        if not path.is_file():
            return np.zeros((height, width), np.uint8), ""
        data = path.read_bytes()
        try:
            labels, _ = read_mask(io.BytesIO(data))  # type: ignore[arg-type]  # PIL reads buffers
        except UserError as exc:
            raise RequestError(422, f"{path}: {exc}") from exc
        if labels.shape != (height, width):
            raise RequestError(
                422, f"{path}: mask is {labels.shape[1]}x{labels.shape[0]}, its frame {width}x{height}"
            )
        return labels, _version(data)

    def save_mask(self, name: str, index: int, labels: np.ndarray, base: str | None) -> dict:
        """Write frame ``index``'s mask and update the budget, atomically, under the store lock.

        base: the version the edit started from (``""`` = no PNG yet; None = overwrite
        whatever is there). A frame showing an object becomes labeled; an all-background one
        leaves the budget (its PNG is still written when one existed, so that nothing
        reappears). Returns {version, labeled, labeled_frames}. Conflict (409) when ``base``
        is not the current version; RequestError 400 for labels of the wrong size.
        """
        height, width = self.frame_size(name)
        if labels.shape != (height, width):
            raise RequestError(
                400,
                f"mask is {labels.shape[1]}x{labels.shape[0]} but frame {index} of {name} "
                f"is {width}x{height}",
            )
        path = self.mask_path(name, index)
        with self.lock:
            current = _version(path.read_bytes()) if path.is_file() else ""
            if base is not None and base != current:
                raise Conflict(
                    f"frame {index} of {name} was changed elsewhere (another tab?) since this edit "
                    "began; it was reloaded, redo the edit"
                )
            labeled = bool(labels.any())
            if labeled or path.is_file():
                write_mask(path, labels, self.palette(name))
                self.video(name).seq.mask_paths[index] = path
            before = set(self.labeled[name])
            if labeled:
                self.labeled[name].add(index)
            else:
                self.labeled[name].discard(index)
            if self.labeled[name] != before:
                self._save_budget()
            self.revision[name] += 1
            version = _version(path.read_bytes()) if path.is_file() else ""
        return {"version": version, "labeled": labeled, "labeled_frames": sorted(self.labeled[name])}

    def _save_budget(self) -> None:
        """Write the budget JSON (videos in dataset order, frames in temporal order)."""
        save_budget(self.budget_path, self.budget())

    def budget(self) -> Budget:
        """The current budget ``{video: [frame entries]}`` (videos with labeled frames only)."""
        return {
            name: [frame_entry(self.videos[name].seq, i) for i in sorted(frames)]
            for name, frames in self.labeled.items()
            if frames
        }

    def labeled_sequence(self, name: str) -> VideoSequence:
        """The video restricted to its labeled frames, exactly as ``twoshot pseudo-label``
        restricts it (``apply_budget``). RequestError 400 without labeled frames."""
        with self.lock:
            video = self.video(name)
            if not self.labeled[name]:
                raise RequestError(400, f"video {name} has no labeled frame to propagate from")
            try:
                return apply_budget([video.seq], {name: self.budget()[name]})[0]
            except UserError as exc:
                raise RequestError(400, str(exc)) from exc

    # ----------------------------------------------------------------------------------------
    # Objects

    def object_list(self, name: str) -> list[dict]:
        """The video's objects [{id, name, color '#rrggbb'}]: those named in the sidecar and
        those its labeled masks show, by id."""
        colors = palette_colors(self.palette(name))
        ids = set(self.objects.get(name, {}))
        for index in sorted(self.labeled[name]):
            labels, _ = self.read_mask(name, index)
            ids.update(int(v) for v in np.unique(labels) if v != 0)
        meta = self.objects.get(name, {})
        out = []
        for obj in sorted(ids):
            default = "#{:02x}{:02x}{:02x}".format(*colors[obj])
            entry = meta.get(obj, {})
            out.append(
                {"id": obj, "name": entry.get("name", f"object {obj}"), "color": entry.get("color", default)}
            )
        return out

    def set_object(self, name: str, obj: int, label: str, color: str) -> dict:
        """Add or update object ``obj`` (1..255) of a video: its name and display colour."""
        self.video(name)
        if not 1 <= obj <= 255:
            raise RequestError(400, f"object id {obj}: must be 1..255")
        if not (
            len(color) == 7
            and color.startswith("#")
            and all(c in "0123456789abcdefABCDEF" for c in color[1:])
        ):
            raise RequestError(400, f"colour {color!r}: expected #rrggbb")
        label = label.strip()[:100] or f"object {obj}"
        with self.lock:
            self.objects.setdefault(name, {})[obj] = {"name": label, "color": color.lower()}
            self._save_objects()
        return {"id": obj, "name": label, "color": color.lower()}

    def delete_object(self, name: str, obj: int) -> dict:
        """Remove object ``obj`` from a video: its name and its pixels in every labeled frame
        (each PNG rewritten atomically; frames left empty leave the budget)."""
        self.video(name)
        changed = []
        with self.lock:
            for index in sorted(self.labeled[name]):
                labels, version = self.read_mask(name, index)
                if (labels == obj).any():
                    labels[labels == obj] = 0
                    self.save_mask(name, index, labels, version)
                    changed.append(index)
            if self.objects.get(name, {}).pop(obj, None) is not None:
                self._save_objects()
        return {"deleted": obj, "frames": changed}

    def _save_objects(self) -> None:
        write_json(
            self.objects_path,
            {
                video: {str(k): v for k, v in sorted(objs.items())}
                for video, objs in self.objects.items()
                if objs
            },
        )

    # ----------------------------------------------------------------------------------------
    # Suggestions

    def suggest(self, name: str, shots: int, strategy: str, seed: int = 0) -> list[int]:
        """Frames ``twoshot budget`` would label with ``shots`` and ``strategy`` among all frames
        of the video (indices, temporal order)."""
        if strategy not in STRATEGIES:
            raise RequestError(400, f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if not 1 <= shots <= 1000:
            raise RequestError(400, f"k = {shots}: expected 1..1000")
        seq = self.video(name).seq
        # Every frame is a candidate: the page labels frames that have no PNG yet.
        everything = replace(seq, mask_paths={i: Path() for i in range(seq.num_frames)})
        budget = make_budget([everything], shots, strategy, seed, require_objects=False)
        return resolve_entries(seq, budget[name])

    # ----------------------------------------------------------------------------------------
    # Summaries

    def summary(self, name: str) -> dict:
        """What the video list shows: name, frame count, labeled count."""
        video = self.video(name)
        return {"name": name, "frames": video.seq.num_frames, "labeled": len(self.labeled[name])}

    def details(self, name: str) -> dict:
        """What the frame view needs: size, frame names, labeled and annotated frames, objects."""
        video = self.video(name)
        height, width = self.frame_size(name)
        return {
            "name": name,
            "frames": video.seq.num_frames,
            "frame_names": video.seq.frame_names,
            "width": width,
            "height": height,
            "labeled": sorted(self.labeled[name]),
            "annotated": sorted(video.seq.mask_paths),
            "objects": self.object_list(name),
            "palette": ["#{:02x}{:02x}{:02x}".format(*c) for c in palette_colors(self.palette(name))],
        }


def _pngs(folder: Path) -> Sequence[Path]:
    """PNG files of a folder (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def _version(data: bytes) -> str:
    """A mask's version: a short hash of its PNG bytes."""
    return hashlib.sha256(data).hexdigest()[:16]
