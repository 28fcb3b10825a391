"""Background propagation: one job (a thread) per video, the pseudo-label engine inside.

A job runs what ``twoshot pseudo-label`` runs for one video: the video restricted to its
labeled frames by ``apply_budget``, its labeled masks, and the engine's ``bidirectional``
direction with confidence (as :func:`twoshot.inference.pseudo_label.pseudo_label_frames`), so its
masks equal the bank's for the same checkpoint and labels. Frames are kept in memory as the
engine yields them (each one final), so the page shows the first ones while the rest are
computed. Jobs share one engine, and a lock runs them one at a time (the engine is CPU/GPU
bound and holds per-run state); starting a video's job again cancels its running one
between two frames.

Propagating again after a correction recomputes only the frames it changes. Each unlabeled
frame takes the run from its nearest labeled frame, a run depends only on its own labeled
mask and the frames it passes, and runs are causal: a frame whose nearest labeled frame is
the same, with the same mask, as in the previous job has the same result, which is reused.
The engine is asked (``output_frames``) for the other frames only.

A job may also go one way only from one labeled frame (:meth:`PropagationJobs.start` with
``origin``): forward or backward up to the next labeled frame, as the propagation tools of
interactive VOS demos do; the other frames keep the previous job's results.

Model suggestions (``uncertainty``, ``disagreement``) run on the same engine, under the same
lock: :meth:`PropagationJobs.suggest`.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.config import InferenceConfig
from twoshot.data.budget import MODEL_STRATEGIES
from twoshot.data.layout import VideoSequence
from twoshot.data.readers import load_annotations, load_frames
from twoshot.errors import UserError
from twoshot.inference import assign_sources
from twoshot.inference.engine import PropagationEngine
from twoshot.model.interface import VOSModel


@dataclass
class Job:
    """One propagation of one video.

    state: queued | running | done | failed | cancelled; labeled: the labeled frames and
    their masks the job propagates; revision: the store's revision of the video when the job
    started (a later edit makes the result stale); results: frame -> (labels uint8 [H, W],
    confidence uint8 [H, W], max probability x 255); reused: frames taken from the previous
    job unchanged; span: (origin, first, last, direction) of a one-way job, None for both
    ways.
    """

    video: str
    total: int
    labeled: dict[int, np.ndarray]
    revision: int
    state: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.perf_counter)
    first_frame_s: float | None = None
    finished_s: float | None = None
    results: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    reused: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    id: int = field(default_factory=itertools.count(1).__next__)
    span: tuple[int, int, int, str] | None = None

    @property
    def sources(self) -> list[int]:
        """Per frame, the labeled frame whose run gives it."""
        return assign_sources(self.total, list(self.labeled))


class PropagationJobs:
    """Propagation jobs of the app: start, cancel, report progress, hand out frames."""

    def __init__(self, store: AnnotationStore, model: VOSModel, config: InferenceConfig) -> None:
        self.store = store
        self.engine = PropagationEngine(model, config)
        self._engine_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self, video: str, *, reuse: bool = True, origin: int | None = None, direction: str = "forward"
    ) -> Job:
        """Start propagating ``video`` from its labeled frames (cancelling its running job).

        reuse: keep the previous job's frames that the new labels do not change. origin: go
        one way only, from this labeled frame in ``direction`` (forward | backward) up to the
        next labeled frame or the video's end; the other frames keep the previous job's
        results. RequestError 400 when the video has no labeled frame, or ``origin`` is not
        one, or ``direction`` is neither.
        """
        seq, masks, revision = self._labeled(video)
        job = Job(video, seq.num_frames, masks, revision)
        if origin is not None:
            job.span = _span(seq.num_frames, sorted(masks), origin, direction)
            job.labeled = {origin: masks[origin]}
        with self._lock:
            previous = self._jobs.get(video)
            if previous is not None:
                previous.cancel.set()
            if job.span is not None:
                if previous is not None:
                    first, last = job.span[1], job.span[2]
                    kept = {f: r for f, r in previous.results.copy().items() if not first <= f <= last}
                    job.results.update(kept)
                    job.reused = len(kept)
            # Reuse follows the nearest rule's sources; a fused frame depends on both sides.
            elif (
                reuse
                and previous is not None
                and previous.span is None
                and self.engine.config.merge == "nearest"
            ):
                job.results.update(_reusable(previous, job))
                job.reused = len(job.results)
            self._jobs[video] = job
        job.thread = threading.Thread(
            target=self._run, args=(job, seq), name=f"propagate-{video}", daemon=True
        )
        job.thread.start()
        return job

    def _labeled(self, video: str) -> tuple[VideoSequence, dict[int, np.ndarray], int]:
        """(the video restricted to its labeled frames, their masks {frame: uint8 [H, W]}, the
        store's revision of the video), read together under the store's lock. RequestError
        400 without labeled frames, 422 for an unreadable mask."""
        with self.store.lock:
            seq = self.store.labeled_sequence(video)
            revision = self.store.revision[video]
            try:
                masks, _ = load_annotations(seq)
            except UserError as exc:
                raise RequestError(422, str(exc)) from exc
        return seq, masks, revision

    def _run(self, job: Job, seq: VideoSequence) -> None:
        """The job's thread: wait for the engine, then store each frame as it is final."""
        try:
            with self._engine_lock:
                if job.cancel.is_set():
                    job.state = "cancelled"
                    return
                job.state = "running"
                frames = load_frames(seq)
                if job.span is None:
                    wanted = [f for f in range(job.total) if f not in job.results or f in job.labeled]
                    order = list(range(job.total))
                    propagation = self.engine.frames(
                        frames,
                        job.labeled,
                        direction="bidirectional",
                        output_frames=wanted if job.reused else None,
                        confidence=True,
                    )
                else:  # one way: the span's frames in the direction of travel, origin first
                    origin, first, last, direction = job.span
                    order = list(range(first, last + 1))
                    if direction == "backward":
                        order.reverse()
                    wanted = order
                    propagation = self.engine.frames(
                        [frames[f] for f in order],
                        {0: job.labeled[origin]},
                        direction="forward",
                        confidence=True,
                    )
                for out in propagation:
                    if job.cancel.is_set():
                        job.state = "cancelled"
                        return
                    frame = order[out.frame]
                    if frame not in wanted:
                        continue  # reused: the engine leaves it out (background)
                    assert out.confidence is not None
                    job.results[frame] = (out.labels, out.confidence)
                    if job.first_frame_s is None and frame not in job.labeled:
                        job.first_frame_s = time.perf_counter() - job.created
                job.state = "done"
        except UserError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a failed job is reported on the page, the server keeps going
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_s = time.perf_counter() - job.created

    def suggest(self, video: str, count: int, strategy: str) -> list[int]:
        """``count`` more frames of ``video`` to label, ascending, chosen by ``strategy`` (one
        of :data:`~twoshot.data.budget.MODEL_STRATEGIES`) as ``twoshot budget`` chooses them,
        starting from the frames labeled so far.

        Unlike ``twoshot budget``, the picks' true masks are unknown (the user has not drawn
        them): each pick joins the labeled frames with its predicted mask as a stand-in,
        the best guess of what the user will draw. RequestError 400 for another strategy or
        a ``count`` outside 1..(unlabeled frames), 400 when nothing is labeled yet.
        """
        from twoshot.inference.suggest import greedy_picks, model_scorer

        if strategy not in MODEL_STRATEGIES:
            raise RequestError(400, f"strategy {strategy!r}: expected one of {', '.join(MODEL_STRATEGIES)}")
        seq, masks, _ = self._labeled(video)
        unlabeled = [f for f in range(seq.num_frames) if f not in masks]
        if not 1 <= count <= len(unlabeled):
            raise RequestError(
                400, f"k = {count}: expected 1..{len(unlabeled)} (the unlabeled frames of {video})"
            )
        predictions: dict[int, np.ndarray] = {}
        score = model_scorer(strategy, self.engine, predictions)
        with self._engine_lock:
            picks = greedy_picks(load_frames(seq), masks, count, score, unlabeled, predictions.get)
        return sorted(picks)

    def get(self, video: str) -> Job | None:
        """The video's latest job, or None."""
        self.store.video(video)
        with self._lock:
            return self._jobs.get(video)

    def status(self, video: str) -> dict:
        """Progress of the video's latest job, for the page's polling."""
        job = self.get(video)
        if job is None:
            return {"state": "none", "done": 0, "total": self.store.video(video).seq.num_frames, "ready": []}
        ready = job.results.copy()  # the job's thread adds frames meanwhile
        return {
            "id": job.id,
            "state": job.state,
            "done": len(ready),
            "total": job.total,
            "ready": sorted(ready),
            "labeled": sorted(job.labeled),
            "span": None
            if job.span is None
            else dict(zip(("from", "first", "last", "direction"), job.span, strict=True)),
            "reused": job.reused,
            "stale": job.revision != self.store.revision[video],
            "error": job.error,
            "first_frame_s": job.first_frame_s,
            "seconds": job.finished_s if job.finished_s is not None else time.perf_counter() - job.created,
        }

    def frame(self, video: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidence) of a propagated frame; RequestError 404 if not (yet) computed."""
        self.store.check_frame(video, index)
        job = self.get(video)
        result = job.results.get(index) if job is not None else None
        if result is None:
            raise RequestError(404, f"frame {index} of {video} has not been propagated")
        return result

    def wait(self, video: str, timeout: float | None = None) -> Job | None:
        """Block until the video's latest job has ended (tests, benchmarks); returns it."""
        job = self.get(video)
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return job


def _span(total: int, labeled: list[int], origin: int, direction: str) -> tuple[int, int, int, str]:
    """(origin, first, last, direction): the frames a one-way job from ``origin`` covers, up
    to the next labeled frame (excluded) or the video's end. RequestError 400 when
    ``origin`` is not labeled or ``direction`` is neither forward nor backward."""
    if direction not in ("forward", "backward"):
        raise RequestError(400, f"direction {direction!r}: expected forward or backward")
    if origin not in labeled:
        raise RequestError(
            400,
            f"frame {origin} is not labeled: label it (or accept its propagated mask) to propagate from it",
        )
    if direction == "forward":
        last = min([f for f in labeled if f > origin], default=total) - 1
        return origin, origin, last, direction
    first = max([f for f in labeled if f < origin], default=-1) + 1
    return origin, first, origin, direction


def _reusable(previous: Job, job: Job) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The previous job's unlabeled frames whose run is unchanged in ``job``: same nearest
    labeled frame, holding the same mask, in both."""
    old_sources, new_sources = previous.sources, job.sources
    results = previous.results.copy()
    out = {}
    for frame, result in results.items():
        source = new_sources[frame]
        if frame in job.labeled or old_sources[frame] != source or source not in previous.labeled:
            continue
        if np.array_equal(previous.labeled[source], job.labeled[source]):
            out[frame] = result
    return out
