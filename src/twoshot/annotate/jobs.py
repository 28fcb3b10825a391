"""Background propagation: one job (a thread) per video, the pseudo-label engine inside.

A job runs exactly what ``twoshot pseudo-label`` runs for one video
(:func:`twoshot.inference.pseudo_label.pseudo_label_frames` on the video restricted to its
labeled frames by ``apply_budget``), so its masks equal the bank's for the same checkpoint
and labels. Frames are kept in memory as the engine yields them (each one final), so the
page shows the first ones while the rest are computed. Jobs share one engine, and a lock
runs them one at a time (the engine is CPU/GPU bound and holds per-run state); starting a
video's job again cancels its running one between two frames.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.config import InferenceConfig
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.pseudo_label import pseudo_label_frames
from twoshot.model.interface import VOSModel


@dataclass
class Job:
    """One propagation of one video.

    state: queued | running | done | failed | cancelled; revision: the store's revision of
    the video when the job started (a later edit makes the result stale); results: frame ->
    (labels uint8 [H, W], confidence uint8 [H, W], max probability x 255).
    """

    video: str
    total: int
    labeled: list[int]
    revision: int
    state: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.perf_counter)
    first_frame_s: float | None = None
    finished_s: float | None = None
    results: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    id: int = field(default_factory=itertools.count(1).__next__)


class PropagationJobs:
    """Propagation jobs of the app: start, cancel, report progress, hand out frames."""

    def __init__(self, store: AnnotationStore, model: VOSModel, config: InferenceConfig) -> None:
        self.store = store
        self.engine = PropagationEngine(model, config)
        self._engine_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, video: str) -> Job:
        """Start propagating ``video`` from its labeled frames (cancelling its running job).
        RequestError 400 when it has no labeled frame."""
        with self.store.lock:
            seq = self.store.labeled_sequence(video)
            revision = self.store.revision[video]
        job = Job(video, seq.num_frames, sorted(seq.mask_paths), revision)
        with self._lock:
            previous = self._jobs.get(video)
            if previous is not None:
                previous.cancel.set()
            self._jobs[video] = job
        job.thread = threading.Thread(
            target=self._run, args=(job, seq), name=f"propagate-{video}", daemon=True
        )
        job.thread.start()
        return job

    def _run(self, job: Job, seq: VideoSequence) -> None:
        """The job's thread: wait for the engine, then store each frame as it is final."""
        try:
            with self._engine_lock:
                if job.cancel.is_set():
                    job.state = "cancelled"
                    return
                job.state = "running"
                propagation, _, _ = pseudo_label_frames(self.engine, seq, confidence=True)
                for out in propagation:
                    if job.cancel.is_set():
                        job.state = "cancelled"
                        return
                    assert out.confidence is not None
                    job.results[out.frame] = (out.labels, out.confidence)
                    if job.first_frame_s is None and out.frame not in job.labeled:
                        job.first_frame_s = time.perf_counter() - job.created
                job.state = "done"
        except UserError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a failed job is reported on the page, the server keeps going
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_s = time.perf_counter() - job.created

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
            "labeled": job.labeled,
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
