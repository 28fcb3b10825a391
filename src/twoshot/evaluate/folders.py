"""Evaluate folders of mask PNGs against ground truth, the davis2017-evaluation way.

Layouts: ``pred_dir/<video>/<frame>.png`` for predictions; ground truth either a DAVIS root
(``Annotations/480p/<video>/*.png`` with the video list in ``ImageSets/2017/val.txt``) or a
folder of video folders. For every video the GT frames are the sorted PNGs of its folder;
the first and the last are not scored, and the prediction must have a PNG of the same name
for every other frame. Every problem with the files is a :class:`~twoshot.errors.UserError`
naming the file, raised before any output is written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import multiprocessing
import multiprocessing.pool
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from twoshot.data.masks import read_mask
from twoshot.errors import UserError
from twoshot.evaluate.metrics import (
    GLOBAL_COLUMNS,
    VOID_LABEL,
    EvalResult,
    SequenceScores,
    disk_kernel,
    frame_scores,
    tolerance_radius,
)
from twoshot.fsutil import atomic_path

# Where a DAVIS root keeps its 480p annotations and its default video list.
DAVIS_ANNOTATIONS = Path("Annotations") / "480p"
DAVIS_VAL_LIST = Path("ImageSets") / "2017" / "val.txt"

# davis2017-evaluation's file names when --csv names a folder.
DAVIS_GLOBAL_CSV = "global_results-val.csv"
DAVIS_PER_SEQUENCE_CSV = "per-sequence_results-val.csv"


@dataclass(frozen=True)
class SequenceFiles:
    """The files of one video: GT masks in frame order and the prediction folder."""

    name: str
    gt_paths: tuple[Path, ...]
    pred_dir: Path

    def pred_path(self, gt_path: Path) -> Path:
        """Prediction PNG that pairs with a GT frame (same file name)."""
        return self.pred_dir / gt_path.name


def read_sequence_list(path: str | os.PathLike[str]) -> list[str]:
    """Video names from a text file, one per line (blank lines ignored). UserError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the sequence list ({exc})") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: the sequence list is empty")
    return names


def resolve_gt(
    gt_dir: str | os.PathLike[str], sequences: Sequence[str] | None = None
) -> tuple[Path, list[str]]:
    """Find the folder of GT video folders and the videos to score.

    gt_dir: a DAVIS root (has ``Annotations/480p``) or a folder of video folders.
    sequences: videos to score; default the DAVIS root's ``ImageSets/2017/val.txt``, or
    every sub-folder of a plain folder. Returns (annotation folder, video names).
    """
    gt_root = Path(gt_dir)
    if not gt_root.is_dir():
        raise UserError(f"--gt {gt_root}: not a folder")
    davis = (gt_root / DAVIS_ANNOTATIONS).is_dir()
    annotations = gt_root / DAVIS_ANNOTATIONS if davis else gt_root
    if sequences is None:
        if davis:
            val_list = gt_root / DAVIS_VAL_LIST
            if not val_list.is_file():
                raise UserError(
                    f"{val_list}: missing; a DAVIS root needs its video list "
                    "(or name the videos with --sequences FILE)"
                )
            sequences = read_sequence_list(val_list)
        else:
            sequences = sorted(
                p.name for p in annotations.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            if not sequences:
                raise UserError(
                    f"--gt {gt_root}: no video folders in it (expected "
                    "<video>/<frame>.png or a DAVIS root with Annotations/480p)"
                )
    names = list(sequences)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"video(s) listed more than once: {', '.join(repeated)}")
    return annotations, names


def collect_files(
    pred_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str], sequences: Sequence[str] | None = None
) -> list[SequenceFiles]:
    """List and check every file an evaluation needs, before reading any of them.

    Raises UserError for a missing or empty GT video folder, a video with fewer than three
    GT frames, or a prediction folder lacking a video or a scored frame.
    """
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise UserError(f"--pred {pred_root}: not a folder")
    annotations, names = resolve_gt(gt_dir, sequences)
    out = []
    for name in names:
        gt_video = annotations / name
        if not gt_video.is_dir():
            raise UserError(f"{gt_video}: ground-truth folder of video {name!r} is missing")
        gt_paths = tuple(
            sorted(p for p in gt_video.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        )
        if not gt_paths:
            raise UserError(f"{gt_video}: ground-truth folder has no PNG masks")
        if len(gt_paths) < 3:
            raise UserError(
                f"{gt_video}: {len(gt_paths)} ground-truth frame(s); the DAVIS "
                "protocol skips the first and the last, so at least 3 are needed"
            )
        pred_video = pred_root / name
        if not pred_video.is_dir():
            raise UserError(f"{pred_video}: prediction folder of video {name!r} is missing")
        files = SequenceFiles(name, gt_paths, pred_video)
        for gt_path in gt_paths[1:-1]:
            if not files.pred_path(gt_path).is_file():
                raise UserError(
                    f"{files.pred_path(gt_path)}: prediction frame is missing (ground truth has {gt_path})"
                )
        out.append(files)
    return out


def _read_labels(path: Path, shape: tuple[int, int] | None, what: str) -> np.ndarray:
    """Read a mask PNG as uint8 [H, W]; UserError if its size is not ``shape`` (H, W)."""
    labels, _ = read_mask(path)
    if labels.ndim != 2:
        raise UserError(
            f"{path}: {what} mask has shape {labels.shape}; expected a single-channel indexed PNG"
        )
    if shape is not None and labels.shape != shape:
        raise UserError(
            f"{path}: {what} mask is {labels.shape[1]}x{labels.shape[0]} "
            f"(width x height); the ground truth is {shape[1]}x{shape[0]}"
        )
    return labels


def evaluate_files(files: SequenceFiles) -> SequenceScores:
    """Score one video from its PNGs, frame by frame (one frame pair in memory at a time).

    Objects are 1..max label of the first GT frame (void 255 read as 0). Returns the
    per-frame J and F of the scored frames (all but the first and the last).
    """
    first = _read_labels(files.gt_paths[0], None, "ground-truth")
    shape = first.shape
    num_objects = int(np.max(np.where(first == VOID_LABEL, 0, first), initial=0))
    object_ids = tuple(range(1, num_objects + 1))
    scored = files.gt_paths[1:-1]
    j = np.zeros((num_objects, len(scored)), dtype=np.float64)
    f = np.zeros((num_objects, len(scored)), dtype=np.float64)
    kernel = disk_kernel(tolerance_radius(*shape))
    for column, gt_path in enumerate(scored):
        gt = _read_labels(gt_path, shape, "ground-truth")
        pred = _read_labels(files.pred_path(gt_path), shape, "prediction")
        if num_objects:
            # Void (255) never equals an object id, so GT needs no rewriting here.
            j[:, column], f[:, column] = frame_scores(pred, gt, object_ids, kernel)
    return SequenceScores(files.name, object_ids, tuple(p.stem for p in scored), j, f)


def _init_worker() -> None:
    """Worker start: one OpenCV thread per process, the processes are the parallelism."""
    cv2.setNumThreads(1)


def _pool_context() -> multiprocessing.context.BaseContext:
    """'spawn': fresh worker processes.

    Forking a process whose OpenCV (or OpenMP) thread pool is already running can leave the
    child blocked forever on a lock held by a thread that does not exist in it (seen after
    training code ran in the same process). The evaluator's imports are light (NumPy, OpenCV,
    Pillow; not torch), so a spawned worker starts in a fraction of a second.
    """
    return multiprocessing.get_context("spawn")


def _score_in_parallel(files: Sequence[SequenceFiles], workers: int) -> Iterator[SequenceScores]:
    """Score videos in ``workers`` processes: this one and ``workers - 1`` spawned ones.

    A spawned worker takes a fraction of a second to start (a fresh interpreter importing
    NumPy and OpenCV); this process scores videos meanwhile instead of waiting, which on a
    small evaluation decides whether parallelism pays off at all. Videos are ordered longest
    first; this process takes from the front, and a worker is handed the next video from the
    back each time it returns one (so at most one waits per worker). Yields each video's
    scores as it is finished; an error in a worker is raised here.
    """
    jobs = deque(sorted(files, key=lambda item: len(item.gt_paths), reverse=True))
    lock = threading.Lock()
    handed = 0
    results: queue.Queue[SequenceScores | BaseException] = queue.Queue()

    def take(for_worker: bool) -> SequenceFiles | None:
        nonlocal handed
        with lock:
            if not jobs:
                return None
            handed += for_worker
            return jobs.pop() if for_worker else jobs.popleft()

    def hand_next(pool: multiprocessing.pool.Pool) -> None:
        job = take(for_worker=True)
        if job is None:
            return
        # A ValueError means the pool is closing: this process stopped on an error.
        with contextlib.suppress(ValueError):
            pool.apply_async(
                evaluate_files, (job,), callback=lambda item: returned(pool, item), error_callback=results.put
            )

    def returned(pool: multiprocessing.pool.Pool, item: SequenceScores) -> None:
        results.put(item)
        hand_next(pool)

    def received(block: bool) -> Iterator[SequenceScores]:
        while True:
            try:
                item = results.get(block=block)
            except queue.Empty:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if block:
                return

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in the workers: the processes are the parallelism
    try:
        with _pool_context().Pool(workers - 1, initializer=_init_worker) as pool:
            for _ in range(workers - 1):
                hand_next(pool)
            count = 0
            while (job := take(for_worker=False)) is not None:
                yield evaluate_files(job)
                for item in received(block=False):
                    count += 1
                    yield item
            while count < handed:  # every job is handed out now: handed is final
                for item in received(block=True):
                    count += 1
                    yield item
    finally:
        cv2.setNumThreads(threads)


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    sequences: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> EvalResult:
    """Score a folder of predicted masks against ground truth (DAVIS 2017 semi-supervised).

    pred_dir: ``<video>/<frame>.png`` indexed PNGs. gt_dir: a DAVIS root or a folder of
    video folders (see :func:`resolve_gt`). sequences: videos to score (default: DAVIS
    val list, or every GT video folder). workers: processes scoring videos in parallel
    (0 = one per CPU). progress: show a tqdm bar on stderr when there are several videos.
    Returns an :class:`EvalResult` with the videos in the order of ``sequences``.
    Raises UserError for any missing, unreadable, RGB or wrongly sized mask.
    """
    if workers < 0:
        raise UserError(f"--workers {workers}: must be 0 (all CPUs) or more")
    files = collect_files(pred_dir, gt_dir, sequences)
    workers = min(workers or (os.cpu_count() or 1), len(files))
    results: dict[str, SequenceScores] = {}
    with tqdm(
        total=len(files), desc="eval", unit="video", file=sys.stderr, disable=not progress or len(files) < 2
    ) as bar:
        scores = _score_in_parallel(files, workers) if workers > 1 else map(evaluate_files, files)
        for item in scores:
            results[item.name] = item
            bar.update(1)
    result = EvalResult.from_sequences(results[item.name] for item in files)
    if not result.objects:
        raise UserError(
            f"--gt {gt_dir}: no object to score (every video's first ground-truth frame is empty)"
        )
    return result


def format_global_table(result: EvalResult) -> str:
    """The global figures as a two-line, fixed-width table (3 decimals)."""
    widths = [max(len(c), 6) for c in GLOBAL_COLUMNS]
    head = "  ".join(c.rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths))
    row = "  ".join(f"{result.scores[c]:.3f}".rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths))
    return f"{head}\n{row}"


def format_object_table(result: EvalResult) -> str:
    """One line per object of every video: name, J-Mean, F-Mean (3 decimals)."""
    names = [obj.name for obj in result.objects]
    width = max([len("Sequence"), *map(len, names)])
    lines = [f"{'Sequence'.ljust(width)}  {'J-Mean':>6}  {'F-Mean':>6}"]
    for obj in result.objects:
        lines.append(f"{obj.name.ljust(width)}  {obj.j_mean:6.3f}  {obj.f_mean:6.3f}")
    return "\n".join(lines)


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def csv_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(global, per-sequence) CSV paths for ``--csv PREFIX``.

    An existing folder, or a name ending in a path separator, gets davis2017-evaluation's
    names inside it; anything else is a prefix: ``PREFIX_global_results.csv`` and
    ``PREFIX_per-sequence_results.csv``.
    """
    text = os.fspath(prefix)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / DAVIS_GLOBAL_CSV, path / DAVIS_PER_SEQUENCE_CSV
    return (
        path.with_name(path.name + "_global_results.csv"),
        path.with_name(path.name + "_per-sequence_results.csv"),
    )


def write_csv(result: EvalResult, prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write davis2017-evaluation's two CSV files (3 decimals), both or neither.

    Global: ``J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay``; per sequence:
    ``Sequence,J-Mean,F-Mean`` with rows ``<video>_<object id>``. Returns the two paths.
    """
    global_path, per_sequence_path = csv_paths(prefix)
    global_text = _csv_text([list(GLOBAL_COLUMNS), [f"{result.scores[c]:.3f}" for c in GLOBAL_COLUMNS]])
    per_sequence_text = _csv_text(
        [["Sequence", "J-Mean", "F-Mean"]]
        + [[obj.name, f"{obj.j_mean:.3f}", f"{obj.f_mean:.3f}"] for obj in result.objects]
    )
    # Both temporaries are complete before either is renamed into place.
    with ExitStack() as stack:
        tmp_global = stack.enter_context(atomic_path(global_path))
        tmp_per_sequence = stack.enter_context(atomic_path(per_sequence_path))
        tmp_global.write_text(global_text, encoding="utf-8")
        tmp_per_sequence.write_text(per_sequence_text, encoding="utf-8")
    return global_path, per_sequence_path
