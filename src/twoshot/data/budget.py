"""Label budgets: which frames of each training video are labeled.

A budget is ``{video: ["00030.jpg", "00065.jpg"]}``, the format of the reference files
``davis_rand_2frames.json`` and ``yv_rand_2frames.json`` (DESIGN.md section 2): a video
name to the file names of its labeled frames. Entries are matched to frames by file name or
by stem, so ``"00030.jpg"``, ``"00030"`` and (for a video-file source) ``"00030"`` all work.

:func:`apply_budget` restricts each sequence's ``mask_paths`` to its budgeted frames, so
everything downstream can only ever open the PNGs of labeled frames.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_annotations
from twoshot.errors import UserError
from twoshot.fsutil import write_json

Budget = dict[str, list[str]]
STRATEGIES: tuple[str, ...] = ("random", "uniform", "ends")
# Strategies that propagate with a model checkpoint (twoshot.inference.suggest): `twoshot
# budget --checkpoint`, the annotate app with a checkpoint.
MODEL_STRATEGIES: tuple[str, ...] = ("uncertainty", "disagreement")


# --------------------------------------------------------------------------------------------
# File format


def load_budget(path: str | os.PathLike[str]) -> Budget:
    """Read a budget JSON ``{video: [frame file name, ...]}``; UserError if malformed.

    The lists are returned as stored (order and extensions unchanged).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: budget file is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read budget JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise UserError(f'{path}: a budget is a JSON object {{video: ["00030.jpg", ...]}}')
    for video, frames in raw.items():
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise UserError(f"{path}: video {video}: expected a list of frame file names")
    return {str(video): list(frames) for video, frames in raw.items()}


def save_budget(path: str | os.PathLike[str], budget: Mapping[str, Sequence[str]]) -> None:
    """Write ``budget`` as JSON (reference format), atomically."""
    write_json(path, {video: list(frames) for video, frames in budget.items()})


def frame_entry(seq: VideoSequence, index: int) -> str:
    """Budget entry naming frame ``index``: its file name (``00030.jpg``), or its name for a
    video-file source (``00030``)."""
    return seq.frame_paths[index].name if seq.frame_paths else seq.frame_names[index]


def resolve_entries(seq: VideoSequence, entries: Sequence[str]) -> list[int]:
    """Sorted unique frame indices named by budget ``entries``; UserError for an unknown frame."""
    by_file = {p.name: i for i, p in enumerate(seq.frame_paths)}
    by_name = {name: i for i, name in enumerate(seq.frame_names)}
    indices = set()
    for entry in entries:
        index = by_file.get(entry, by_name.get(entry, by_name.get(Path(entry).stem)))
        if index is None:
            raise UserError(f"budget: video {seq.name} has no frame {entry}")
        indices.add(index)
    return sorted(indices)


# --------------------------------------------------------------------------------------------
# Making a budget


def make_budget(
    sequences: Sequence[VideoSequence],
    shots: int = 2,
    strategy: str = "random",
    seed: int = 0,
    *,
    require_objects: bool = True,
) -> Budget:
    """Choose ``shots`` labeled frames per video among the frames that have an annotation PNG.

    strategy: ``random`` (uniformly at random; the draw of a video depends only on ``seed``
    and its name, so adding videos does not change the others), ``uniform`` (the middle
    frame of each of ``shots`` equal stretches: 10 annotated frames, 2 shots -> frames 2
    and 7) or ``ends`` (first and last, then evenly between; 1 shot -> the first).
    With ``require_objects`` a chosen PNG showing no object is replaced by the nearest (for
    random: the next drawn) annotated frame that shows one; only the PNGs considered are read.
    A video with fewer usable frames than ``shots`` gets them all. Returns ``{video: [frame
    file names in temporal order]}``. UserError for a video with no usable annotated frame.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown budget strategy {strategy!r}; expected {', '.join(STRATEGIES)}")
    if shots < 1:
        raise UserError(f"--shots {shots}: need at least one labeled frame per video")
    budget: Budget = {}
    for seq in sequences:
        candidates = sorted(seq.mask_paths)
        if not candidates:
            raise UserError(f"video {seq.name}: no annotated frame to choose from")
        usable = object_checker(seq) if require_objects else (lambda index: True)
        chosen = choose_frames(candidates, shots, strategy, random.Random(f"{seed}:{seq.name}"), usable)
        if not chosen:
            raise UserError(
                f"video {seq.name}: none of its {len(candidates)} annotation PNGs "
                f"shows an object (e.g. {seq.mask_paths[candidates[0]]})"
            )
        budget[seq.name] = [frame_entry(seq, i) for i in sorted(chosen)]
    return budget


def object_checker(seq: VideoSequence) -> Callable[[int], bool]:
    """A cached test ``index -> bool``: does the annotation PNG of frame ``index`` of ``seq``
    show any object?"""
    cache: dict[int, bool] = {}

    def has_object(index: int) -> bool:
        if index not in cache:
            labels, _ = read_mask(seq.mask_paths[index])
            cache[index] = bool(labels.any())
        return cache[index]

    return has_object


def _target_positions(n: int, k: int, strategy: str) -> list[int]:
    """Preferred positions (0..n-1) of ``k`` frames among ``n`` candidates."""
    if strategy == "uniform":
        return [math.floor((i + 0.5) * n / k) for i in range(k)]
    if k == 1:
        return [0]
    # floor(x + 0.5), not round(): Python rounds halves to even, which would look arbitrary.
    return [math.floor(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]


def choose_frames(
    candidates: list[int], shots: int, strategy: str, rng: random.Random, usable: Callable[[int], bool]
) -> list[int]:
    """Up to ``shots`` frame indices chosen among ``candidates`` (sorted) following
    ``strategy`` (:data:`STRATEGIES`), skipping frames ``usable`` refuses; ``rng`` draws
    the random strategy's frames."""
    n = len(candidates)
    k = min(shots, n)
    chosen: list[int] = []
    if strategy == "random":
        for pos in rng.sample(range(n), n):
            if len(chosen) == k:
                break
            if usable(candidates[pos]):
                chosen.append(candidates[pos])
        return chosen
    taken: set[int] = set()
    for target in _target_positions(n, k, strategy):
        # Nearest free usable candidate, looking later first (ties break towards the middle
        # for the first target of "ends" and uniform spreads stay ordered).
        for distance in range(n):
            hit = None
            for pos in (target + distance, target - distance):
                if 0 <= pos < n and pos not in taken and usable(candidates[pos]):
                    hit = pos
                    break
            if hit is not None:
                taken.add(hit)
                chosen.append(candidates[hit])
                break
    return chosen


# --------------------------------------------------------------------------------------------
# Applying a budget


def apply_budget(
    sequences: Sequence[VideoSequence],
    budget: Mapping[str, Sequence[str]],
    *,
    check_objects: bool = True,
    unlisted: str = "drop",
) -> list[VideoSequence]:
    """Restrict each sequence's ``mask_paths`` to its budgeted frames.

    Returns new VideoSequences (the input is not modified), in input order. A dataset video
    the budget does not list is dropped (``unlisted="drop"``; the reference YouTube-VOS
    budget lists 3464 of the 3471 training videos) or refused (``unlisted="error"``).
    With ``check_objects`` each budgeted PNG is read (only those) and validated.
    Raises UserError for a budget naming a video or frame that does not exist, a video with
    no labeled frame, a labeled frame whose PNG is missing or shows no object.
    """
    if unlisted not in ("drop", "error"):
        raise ValueError(f"unlisted must be 'drop' or 'error', not {unlisted!r}")
    names = {seq.name for seq in sequences}
    unknown = [video for video in budget if video not in names]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UserError(f"budget names video(s) not in the dataset: {', '.join(unknown[:3])}{more}")
    out = []
    for seq in sequences:
        if seq.name not in budget:
            if unlisted == "error":
                raise UserError(f"budget: video {seq.name} has no labeled frame (not listed)")
            continue
        indices = resolve_entries(seq, budget[seq.name])
        if not indices:
            raise UserError(f"budget: video {seq.name} has no labeled frame (empty list)")
        for index in indices:
            path = seq.mask_paths.get(index)
            if path is None or not path.is_file():
                where = path or _expected_png(seq, index)
                raise UserError(
                    f"{where}: annotation PNG of labeled frame "
                    f"{seq.frame_names[index]} (video {seq.name}) is missing"
                )
        restricted = replace(seq, mask_paths={i: seq.mask_paths[i] for i in indices})
        if check_objects:
            labels, _ = load_annotations(restricted)
            for index, frame_labels in labels.items():
                if not frame_labels.any():
                    raise UserError(
                        f"{restricted.mask_paths[index]}: labeled frame shows no object (all background)"
                    )
        out.append(restricted)
    return out


def _expected_png(seq: VideoSequence, index: int) -> str:
    """Where the annotation PNG of frame ``index`` would be, for error messages."""
    if seq.mask_paths:
        return str(next(iter(seq.mask_paths.values())).parent / f"{seq.frame_names[index]}.png")
    return f"video {seq.name} frame {seq.frame_names[index]}"


# --------------------------------------------------------------------------------------------
# Summary


@dataclass
class BudgetSummary:
    """Counts describing a budget over a dataset.

    videos: videos with labels; labeled_frames: their labeled frames; total_frames: all frames
    of those videos; annotated_frames: frames with an annotation PNG on disk;
    short_videos: videos that got fewer labeled frames than asked for.
    """

    videos: int
    labeled_frames: int
    total_frames: int
    annotated_frames: int
    short_videos: list[str] = field(default_factory=list)

    @property
    def share_of_frames(self) -> float:
        """Labeled frames / all frames (DAVIS: 2.9% for two per video)."""
        return self.labeled_frames / self.total_frames if self.total_frames else 0.0

    @property
    def share_of_annotated(self) -> float:
        """Labeled frames / annotated frames (YouTube-VOS: 7.3% for two per video)."""
        return self.labeled_frames / self.annotated_frames if self.annotated_frames else 0.0

    def text(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"videos: {self.videos}",
            f"labeled frames: {self.labeled_frames}",
            f"share of frames labeled: {100 * self.share_of_frames:.1f}% of "
            f"{self.total_frames} frames, {100 * self.share_of_annotated:.1f}% of "
            f"{self.annotated_frames} annotated frames",
        ]
        if self.short_videos:
            shown = ", ".join(self.short_videos[:5]) + (" ..." if len(self.short_videos) > 5 else "")
            lines.append(f"videos with fewer labeled frames than asked: {len(self.short_videos)} ({shown})")
        return "\n".join(lines)


def summarize_budget(
    sequences: Sequence[VideoSequence], budget: Mapping[str, Sequence[str]], shots: int | None = None
) -> BudgetSummary:
    """Count videos, labeled frames and shares of ``budget`` over ``sequences`` (the dataset
    before :func:`apply_budget`); ``shots`` flags videos that got fewer frames."""
    by_name = {seq.name: seq for seq in sequences}
    labeled = total = annotated = 0
    short = []
    for video, entries in budget.items():
        seq = by_name.get(video)
        if seq is None:
            raise UserError(f"budget names video {video}, which is not in the dataset")
        count = len(resolve_entries(seq, entries))
        labeled += count
        total += seq.num_frames
        annotated += len(seq.mask_paths)
        if shots is not None and count < shots:
            short.append(video)
    return BudgetSummary(len(budget), labeled, total, annotated, short)
