"""The pseudo-label bank on disk: one PNG per frame in DAVIS layout, a manifest, resumable.

Layout::

    BANK/manifest.json             what made the bank, and each frame's source labeled frame
    BANK/progress*.jsonl           one line per finished video (one file per process)
    BANK/<video>/<frame>.png       indexed PNG, the input's palette, original size
    BANK/<video>/confidence/<frame>.png   optional: max probability x 255 (uint8 grey)

Each video folder is written atomically (``twoshot.fsutil.atomic_dir``) and then recorded
in the progress file, so an interrupted run leaves only complete videos behind, and a rerun
with the same checkpoint and budget skips the recorded ones. The manifest's identity
(checkpoint and budget sha256, inference settings) is written when the bank is started; a
folder made from another checkpoint, budget or settings is refused.

Phase 2 reads the bank back as training videos (:func:`bank_sequences`). With
``twoshot.write_back`` it rewrites unlabeled frames' PNGs in place, under this module's
per-video locks, leaving the labeled frames the manifest lists (:func:`read_labeled_frames`)
alone, and records it under the manifest's ``write_back`` key (:mod:`twoshot.train.write_back`);
:meth:`BankStore.finish` keeps that record, so a bank refined this way never looks like
plain phase-1 output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from twoshot._version import __version__
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import write_mask
from twoshot.errors import UserError
from twoshot.fsutil import atomic_dir, write_json

FORMAT = "twoshot-pseudo-label-bank/1"
MANIFEST = "manifest.json"
WRITE_BACK = "write_back"  # manifest key: the phase-2 write-back record, if any
CONFIDENCE_DIR = "confidence"

PathLike = str | os.PathLike[str]


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """Hex sha256 of a state dict's names, shapes, dtypes and bytes (for models not from a file)."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def budget_sha256(budget: Mapping[str, Sequence[str]]) -> str:
    """Hex sha256 of a budget's canonical JSON (sorted videos, frames in the given order)."""
    text = json.dumps({k: list(budget[k]) for k in sorted(budget)}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class BankIdentity:
    """What a bank is made from. checkpoint / budget: {"path": str | None, "sha256": str};
    inference: the settings that change the bank's files (propagation settings and whether
    confidence maps are written)."""

    checkpoint: dict[str, Any]
    budget: dict[str, Any]
    inference: dict[str, Any]

    def mismatches(self, other: Mapping[str, Any]) -> list[str]:
        """Human-readable differences from a manifest's recorded identity (empty if the same)."""
        problems = []
        for key in ("checkpoint", "budget"):
            mine, theirs = getattr(self, key), other.get(key) or {}
            if mine.get("sha256") != theirs.get("sha256"):
                problems.append(
                    f"{key}: the bank was made from {theirs.get('path') or 'weights'} "
                    f"(sha256 {str(theirs.get('sha256'))[:12]}...), this run uses "
                    f"{mine.get('path') or 'weights'} (sha256 {str(mine.get('sha256'))[:12]}...)"
                )
        theirs_inf = other.get("inference") or {}
        for name, value in self.inference.items():
            if theirs_inf.get(name) != value:
                problems.append(
                    f"inference.{name}: the bank used {theirs_inf.get(name)!r}, this run {value!r}"
                )
        return problems


@dataclass
class VideoRecord:
    """One finished video: labeled frame names, each frame's source labeled frame, objects."""

    video: str
    labeled: list[str]
    sources: dict[str, str]
    objects: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest / progress entry."""
        return {"video": self.video, "labeled": self.labeled, "objects": self.objects, "frames": self.sources}


class BankFrame(Protocol):
    """One final frame to write (``twoshot.inference.engine.FrameOutput`` is one): its index,
    uint8 [H, W] object ids, the labeled frame it came from (None: none), and its uint8
    [H, W] confidence (None when not computed)."""

    frame: int
    labels: np.ndarray
    source: int | None
    confidence: np.ndarray | None


class BankStore:
    """Reads and writes one bank folder for one process (``rank`` of ``world``)."""

    def __init__(
        self,
        root: PathLike,
        identity: BankIdentity,
        *,
        confidence: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.root = Path(root)
        self.identity = identity
        self.confidence = confidence
        self.rank = rank
        self.world = world

    @property
    def manifest_path(self) -> Path:
        """BANK/manifest.json."""
        return self.root / MANIFEST

    @property
    def progress_path(self) -> Path:
        """This process's progress file."""
        name = "progress.jsonl" if self.rank == 0 else f"progress.rank{self.rank}.jsonl"
        return self.root / name

    def check(self) -> bool:
        """Refuse a folder this run must not write into. Returns whether a bank already exists.

        UserError if ``root`` is a file, a non-empty folder without a manifest, or a bank made
        from another checkpoint, budget or inference settings.
        """
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a folder")
        if not self.manifest_path.is_file():
            if self.root.is_dir() and any(not p.name.startswith(".") for p in self.root.iterdir()):
                raise UserError(
                    f"{self.root}: folder is not empty and holds no {MANIFEST}; "
                    "refusing to write a pseudo-label bank into it"
                )
            return False
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.manifest_path}: cannot read manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{self.manifest_path}: not a twoshot pseudo-label bank manifest")
        problems = self.identity.mismatches(manifest)
        if problems:
            raise UserError(
                f"{self.manifest_path}: this bank was made with other inputs; use "
                "another --out folder or delete it\n  " + "\n  ".join(problems)
            )
        return True

    def start(self) -> None:
        """Write the manifest's identity (status "in progress") if the bank is new."""
        if not self.manifest_path.is_file():
            write_json(self.manifest_path, self._manifest("in progress", {}))

    def done(self) -> dict[str, VideoRecord]:
        """Videos recorded in any progress file whose folder exists."""
        records: dict[str, VideoRecord] = {}
        for path in sorted(self.root.glob("progress*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    record = VideoRecord(
                        entry["video"], entry["labeled"], entry["frames"], entry.get("objects", [])
                    )
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that video is simply redone
                if (self.root / record.video).is_dir():
                    records[record.video] = record
        return records

    def write_video(
        self,
        video: str,
        frame_names: Sequence[str],
        labeled: Sequence[int],
        object_ids: Sequence[int],
        frames: Iterable[BankFrame],
        palette: bytes | None,
    ) -> VideoRecord:
        """Write one video's frames as they come, atomically, then record it as done.

        frames: each frame once (any order), as the propagation engine yields them; their
        ``confidence`` is written when this bank keeps confidence maps. labeled: the indices
        of the labeled frames; object_ids: the video's objects. Returns its record.
        """
        final = self.root / video
        sources: dict[int, int] = {}
        with atomic_dir(final) as tmp:
            if self.confidence:
                (tmp / CONFIDENCE_DIR).mkdir()
            for out in frames:
                name = frame_names[out.frame]
                write_mask(tmp / f"{name}.png", out.labels, palette)
                if self.confidence:
                    if out.confidence is None:
                        raise ValueError(f"video {video}: frame {name} came without its confidence")
                    Image.fromarray(np.ascontiguousarray(out.confidence), mode="L").save(
                        tmp / CONFIDENCE_DIR / f"{name}.png"
                    )
                if out.source is not None:
                    sources[out.frame] = out.source
        record = VideoRecord(
            video,
            [frame_names[i] for i in sorted(labeled)],
            {frame_names[f]: frame_names[sources[f]] for f in sorted(sources)},
            list(object_ids),
        )
        with open(self.progress_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def finish(self, videos: Sequence[str]) -> dict[str, Any]:
        """Write the final manifest listing ``videos`` (in this order) that are done.

        Status is "complete" when all of them are. Returns the manifest.
        """
        done = self.done()
        listed = {name: done[name].to_json() for name in videos if name in done}
        for entry in listed.values():
            del entry["video"]
        status = "complete" if len(listed) == len(videos) else "in progress"
        manifest = self._manifest(status, listed)
        previous = self._read_manifest()
        if WRITE_BACK in previous:  # phase 2 already changed the files: keep saying so
            manifest[WRITE_BACK] = previous[WRITE_BACK]
        write_json(self.manifest_path, manifest)
        return manifest

    def _read_manifest(self) -> dict[str, Any]:
        """The manifest on disk as a dict ({} if missing or unreadable)."""
        return read_manifest(self.manifest_path.parent)

    def _manifest(self, status: str, videos: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "status": status,
            "twoshot_version": __version__,
            "checkpoint": self.identity.checkpoint,
            "budget": self.identity.budget,
            "inference": self.identity.inference,
            "confidence_maps": self.confidence,
            "videos": videos,
        }


# --------------------------------------------------------------------------------------------
# Reading the bank back as training videos


def check_bank(
    bank: str | Path, sequences: Sequence[VideoSequence], budget: str | Path | None = None
) -> None:
    """UserError naming the file unless ``bank`` is a finished pseudo-label bank of these
    training videos (and, with the budget file ``budget``, made from that budget: the bank
    records the file's sha256, or its content's when it was given as a mapping)."""
    from twoshot.data.budget import load_budget

    root = Path(bank)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise UserError(f"{root}: no such pseudo-label bank folder")
    if not manifest_path.is_file():
        raise UserError(
            f"{root}: not a pseudo-label bank (no {MANIFEST}); make one with `twoshot pseudo-label`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest_path}: cannot read the bank manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path}: not a twoshot pseudo-label bank manifest")
    if manifest.get("status") != "complete":
        raise UserError(
            f"{manifest_path}: the bank is not finished (status {manifest.get('status')!r}); "
            "run `twoshot pseudo-label` again to complete it"
        )
    names = {seq.name for seq in sequences}
    foreign = sorted(set(manifest.get("videos") or {}) - names)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UserError(
            f"{manifest_path}: the bank holds videos that are not in the training data "
            f"({', '.join(foreign[:3])}{more}); it was made from another dataset"
        )
    if budget is not None:
        recorded = (manifest.get("budget") or {}).get("sha256")
        if recorded not in (file_sha256(budget), budget_sha256(load_budget(budget))):
            made_from = (manifest.get("budget") or {}).get("path") or "a budget given in memory"
            raise UserError(
                f"{manifest_path}: the bank was made from another budget ({made_from}), not {budget}"
            )


def bank_is_complete(bank: PathLike) -> bool:
    """Whether folder ``bank`` holds a finished pseudo-label bank (its manifest says so)."""
    return read_manifest(Path(bank)).get("status") == "complete"


def read_manifest(bank: Path) -> dict[str, Any]:
    """The manifest of the bank in folder ``bank`` as a dict ({} if missing or unreadable)."""
    try:
        manifest = json.loads((bank / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def bank_sequences(sequences: list[VideoSequence], bank: Path) -> list[VideoSequence]:
    """The training videos with every frame's annotation taken from the pseudo-label bank.

    Videos the bank does not hold (no labeled frame in the budget) are left out.
    """
    result = []
    for seq in sequences:
        folder = bank / seq.name
        if not folder.is_dir():
            continue
        paths = {i: folder / f"{name}.png" for i, name in enumerate(seq.frame_names)}
        missing = [p for p in paths.values() if not p.is_file()]
        if missing:
            raise UserError(
                f"{missing[0]}: pseudo-label bank is missing this frame ({len(missing)} missing in {folder})"
            )
        result.append(replace(seq, mask_paths=paths, object_first_frame=None))
    if not result:
        raise UserError(f"{bank}: the pseudo-label bank holds none of the training videos")
    return result


def read_labeled_frames(bank: Path, videos: Sequence[VideoSequence]) -> dict[str, set[int]]:
    """Indices of the labeled (ground-truth) frames of each video, from the bank manifest.

    UserError if the manifest is missing or unreadable, or does not list one of ``videos``:
    without it the ground-truth frames cannot be protected.
    """
    path = bank / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = manifest["videos"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: cannot read the bank manifest, which twoshot.write_back needs "
            f"to leave the labeled frames alone ({exc})"
        ) from exc
    labeled: dict[str, set[int]] = {}
    for video in videos:
        if video.name not in entries:
            raise UserError(
                f"{path}: video {video.name} is not recorded in the bank manifest; "
                "regenerate the bank before using twoshot.write_back"
            )
        names = set(entries[video.name].get("labeled", []))
        labeled[video.name] = {i for i, name in enumerate(video.frame_names) if name in names}
    return labeled


# --------------------------------------------------------------------------------------------
# Locks of phase 2's write-back (twoshot.train.write_back)

try:  # POSIX only; checked when a BankWriter is made
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".write_back.lock"  # per video folder: serialises its frames' rewrites
MANIFEST_LOCK = ".manifest.lock"  # in the bank folder: serialises manifest updates


def check_locks() -> None:
    """Raise UserError where POSIX file locks (``fcntl``) are missing (Windows)."""
    if fcntl is None:  # pragma: no cover - Windows
        raise UserError("twoshot.write_back needs POSIX file locks (fcntl), not available here")


@contextlib.contextmanager
def exclusive_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) during the block.

    Blocks until no other process holds it. The lock file is never deleted: deleting it
    while another process waits on it would let a third lock a new file beside them.
    """
    check_locks()
    with open(path, "ab") as handle:  # "a": create without truncating
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def video_lock(folder: PathLike) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock of one bank video folder (``folder/.write_back.lock``)."""
    return exclusive_lock(Path(folder) / LOCK_NAME)
