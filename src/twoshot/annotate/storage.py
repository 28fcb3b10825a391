"""The opened dataset as the annotation app sees it: videos, frames, masks, label budget.

Every edit is written at once, atomically, in the dataset's own format: an indexed PNG with
the dataset's palette at the frame's size (``twoshot.data.masks.write_mask``) and the label
budget JSON in the reference format (``twoshot.data.budget.save_budget``). A frame is
*labeled* when the budget lists it; annotation PNGs on disk that the budget does not list
(e.g. DAVIS's dense ground truth) are shown and can be made labeled by saving them.

Concurrent editors: each mask has a version (a hash of its PNG's bytes); a save names the
version it was based on, and a save based on an older one is refused (:class:`Conflict`),
so two tabs editing one frame cannot silently overwrite each other. One lock serialises all
writes, so the PNG and the budget always agree. A saved mask may only show the video's
objects (those named beside the budget or on its labeled masks), whose ids are capped.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from twoshot.annotate.files import Video, list_videos, load_objects, load_suggestions, save_objects
from twoshot.data import readers
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
from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask
from twoshot.data.writers import palette_colors
from twoshot.errors import UserError
from twoshot.fsutil import write_json

THUMB_HEIGHT = 54
# Object ids a video may use unless the app is told otherwise: enough for DAVIS (at most 10
# per video) and YouTube-VOS, and a bound on what one malformed upload can make the page draw
# and the propagation carry.
DEFAULT_MAX_OBJECTS = 20


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


def default_budget_path(data: Path) -> Path:
    """Where the budget JSON goes when none is named: ``DATA/budget.json``, or
    ``<stem>_budget.json`` beside a video file."""
    return data.with_name(f"{data.stem}_budget.json") if data.is_file() else data / "budget.json"


class AnnotationStore:
    """Videos, frames, masks, objects and the label budget of one dataset on disk.

    data: a DAVIS, YouTube-VOS or generic folder, or a video file (masks then go to
    ``<stem>_masks/<frame index>.png`` beside it, as ``twoshot infer`` reads them).
    layout: the dataset layout (None = detected); split: DAVIS/YouTube-VOS split (None = every video
    folder for DAVIS; for YouTube-VOS the root if it holds meta.json, else ``train``);
    budget: the budget JSON to read and update (None = :func:`default_budget_path`);
    max_objects: the highest object id a video may use (1..255).
    Raises UserError for an unreadable dataset or a budget that names unknown videos or
    frames.
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        layout: str | None = None,
        split: str | None = None,
        budget: str | os.PathLike[str] | None = None,
        max_objects: int = DEFAULT_MAX_OBJECTS,
    ) -> None:
        # Absolute paths: the page shows them, and they must not depend on where it was started.
        self.data = Path(data).absolute()
        if not self.data.exists():
            raise UserError(f"{self.data}: no such file or folder")
        if not 1 <= max_objects <= 255:
            raise UserError(f"--max-objects {max_objects}: expected 1..255 (object ids are palette indices)")
        self.max_objects = max_objects
        self.layout = layout or readers.detect_layout(self.data, split or "train")
        rules = DATASET_LAYOUTS.get(self.layout)
        if split is None and rules is not None and rules.split_folders:
            # A YouTube-VOS root: its training videos are the ones to label (a DAVIS split is
            # a list of videos; without one the app shows every video folder).
            split = rules.default_split(self.data, training=True)
        # Every path served or written must resolve inside this folder.
        self.root = (self.data.parent if self.data.is_file() else self.data).resolve()
        self.videos: dict[str, Video] = {v.seq.name: v for v in list_videos(self.data, self.layout, split)}
        if not self.videos:
            raise UserError(f"{self.data}: no videos")
        self.budget_path = Path(budget).absolute() if budget is not None else default_budget_path(self.data)
        self.objects_path = self.budget_path.with_name(f"{self.budget_path.stem}.objects.json")
        self.suggestions_path = self.budget_path.with_name(f"{self.budget_path.stem}.suggestions.json")
        self.labeled: dict[str, set[int]] = {name: set() for name in self.videos}
        if self.budget_path.is_file():
            for name, entries in load_budget(self.budget_path).items():
                if name not in self.videos:
                    raise UserError(f"{self.budget_path}: budget names video {name}, not in {self.data}")
                self.labeled[name] = set(resolve_entries(self.videos[name].seq, entries))
        self.objects: dict[str, dict[int, dict[str, str]]] = load_objects(self.objects_path)
        self.suggestions: dict[str, dict] = load_suggestions(self.suggestions_path, self.videos)
        self.revision: dict[str, int] = dict.fromkeys(self.videos, 0)
        self.lock = threading.RLock()
        self._thumbs: dict[tuple[str, int], bytes] = {}
        self._decoded: tuple[str, np.ndarray] | None = None  # a video file's frames
        self._palettes: dict[str, bytes] = {}
        self._frame_ids: dict[tuple[str, int], frozenset[int]] = {}  # object ids of each PNG read

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

    def thumbnail(self, name: str, index: int, labels: np.ndarray | None = None) -> bytes:
        """A small JPEG of a frame for the timeline (cached); with ``labels`` (uint8 [H, W])
        the objects are drawn over it in their display colours (not cached)."""
        key = (name, index)
        if labels is None and key in self._thumbs:
            return self._thumbs[key]
        image = Image.fromarray(self.frame_rgb(name, index))
        size = (max(1, round(image.width * THUMB_HEIGHT / image.height)), THUMB_HEIGHT)
        small = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        if labels is not None:
            ids = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
            table = palette_colors(self.palette(name)).astype(np.float32)
            for obj in self.object_list(name):
                table[obj["id"]] = [int(obj["color"][i : i + 2], 16) for i in (1, 3, 5)]
            tinted = 0.45 * small + 0.55 * table[ids]
            small = np.where(ids[..., None] > 0, tinted, small).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).save(buffer, format="JPEG")
        if labels is None:
            self._thumbs[key] = buffer.getvalue()
        return buffer.getvalue()

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
        self._frame_ids[(name, index)] = _ids(labels)
        return labels, _version(data)

    def save_mask(self, name: str, index: int, labels: np.ndarray, base: str | None) -> dict:
        """Write frame ``index``'s mask and update the budget, atomically, under the store lock.

        base: the version the edit started from (``""`` = no PNG yet; None = overwrite
        whatever is there). A frame showing an object becomes labeled; an all-background one
        leaves the budget (its PNG is still written when one existed, so that nothing
        reappears). Returns {version, labeled, labeled_frames}. Conflict (409) when ``base``
        is not the current version; RequestError 400 for labels of the wrong size or showing
        an object id the video does not have (add it with :meth:`set_object` first).
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
            shown = _ids(labels)
            known = self.object_ids(name)
            unknown = sorted(shown - known)
            if unknown:
                listed = ", ".join(map(str, unknown[:10])) + (
                    f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
                )
                raise RequestError(
                    400,
                    f"mask of frame {index} of {name} shows object id(s) {listed}, which the video does "
                    f"not have (its objects: {', '.join(map(str, sorted(known))) or 'none'}); add the "
                    "object first",
                )
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
                self._frame_ids[(name, index)] = shown
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

    def object_ids(self, name: str) -> set[int]:
        """Ids of the video's objects: those named in the sidecar and those its labeled masks
        show (each PNG read once, then remembered)."""
        with self.lock:
            ids = set(self.objects.get(name, {}))
            for index in sorted(self.labeled[name]):
                ids |= self._ids_on_disk(name, index)
        return ids

    def max_object_id(self, name: str) -> int:
        """The highest object id anywhere in the video: its objects and every annotation PNG
        on disk, labeled or not (0 if none); a new object takes the next one."""
        with self.lock:
            ids = self.object_ids(name)
            for index in self.video(name).seq.mask_paths:
                ids |= self._ids_on_disk(name, index)
        return max(ids, default=0)

    def _ids_on_disk(self, name: str, index: int) -> frozenset[int]:
        """Object ids of frame ``index``'s PNG (none without one, or for one that cannot be
        read: opening that frame reports why)."""
        if (name, index) not in self._frame_ids:
            try:
                self.read_mask(name, index)  # records them
            except RequestError:
                return frozenset()
        return self._frame_ids.get((name, index), frozenset())

    def object_list(self, name: str) -> list[dict]:
        """The video's objects [{id, name, color '#rrggbb'}] (:meth:`object_ids`), by id."""
        colors = palette_colors(self.palette(name))
        ids = self.object_ids(name)
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
        """Add or update object ``obj`` (1..max_objects) of a video: its name and display colour.
        RequestError 400 for an id out of range or a malformed colour."""
        self.video(name)
        if not 1 <= obj <= self.max_objects and obj not in self.object_ids(name):
            raise RequestError(
                400, f"object id {obj}: must be 1..{self.max_objects} (the app's object limit, --max-objects)"
            )
        if not (
            len(color) == 7
            and color.startswith("#")
            and all(c in "0123456789abcdefABCDEF" for c in color[1:])
        ):
            raise RequestError(400, f"colour {color!r}: expected #rrggbb")
        label = label.strip()[:100] or f"object {obj}"
        with self.lock:
            self.objects.setdefault(name, {})[obj] = {"name": label, "color": color.lower()}
            save_objects(self.objects_path, self.objects)
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
                save_objects(self.objects_path, self.objects)
        return {"deleted": obj, "frames": changed}

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

    def remember_suggestions(self, name: str, strategy: str, shots: int, frames: list[int]) -> None:
        """Keep the video's latest suggested frames (the sidecar beside the budget), so that
        they survive switching videos, reloading the page and restarting the app."""
        self.video(name)
        with self.lock:
            self.suggestions[name] = {"strategy": strategy, "k": shots, "frames": sorted(frames)}
            write_json(self.suggestions_path, dict(sorted(self.suggestions.items())))

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
            "max_object_id": self.max_object_id(name),
            "max_objects": self.max_objects,
            "suggested": self.suggestions.get(name, {}).get("frames", []),
            "palette": ["#{:02x}{:02x}{:02x}".format(*c) for c in palette_colors(self.palette(name))],
        }


def _ids(labels: np.ndarray) -> frozenset[int]:
    """The object ids (non-zero values) of a mask."""
    return frozenset(int(v) for v in np.unique(labels) if v != 0)


def _version(data: bytes) -> str:
    """A mask's version: a short hash of its PNG bytes."""
    return hashlib.sha256(data).hexdigest()[:16]
