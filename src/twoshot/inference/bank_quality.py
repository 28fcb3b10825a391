"""How good dense labels made from a label budget are, against full ground truth.

For a dataset whose training videos are fully annotated (generated data, DAVIS train), this
scores the labels a user would get for every frame from the budget's labeled frames alone:

- ``bank``: the two-shot pseudo-label bank (bidirectional propagation with a model, under
  the engine's ``merge`` / ``flip`` / ``scales`` settings);
- ``copy``: each frame a copy of its nearest labeled frame's mask (the bank's merge rule
  without a model);
- ``forward``: ordinary forward propagation from the first labeled frame (frames before it
  stay background), e.g. with the static-pretrained model a user has without two-shot training.

Scores use the DAVIS protocol over all frames of each video (first and last left out), as
the pipeline's bank line, so labeled frames count too. Nothing here is used for training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twoshot.config import InferenceConfig
from twoshot.data.budget import Budget, resolve_entries
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_annotations, load_frames
from twoshot.errors import UserError
from twoshot.evaluate.metrics import evaluate_sequence
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.schedule import assign_sources

METHODS: tuple[str, ...] = ("bank", "copy", "forward")


@dataclass
class LabelScore:
    """J&F of one way of labeling every frame; ``objects``: J&F per ``<video>_<id>``."""

    method: str
    j_and_f: float
    objects: dict[str, float] = field(default_factory=dict)
    labeled_frames: int = 0
    frames: int = 0

    def standard_error(self) -> float | None:
        """Standard error of the J&F over objects (None with fewer than two)."""
        from twoshot.evaluate.standard_errors import standard_error

        return standard_error(list(self.objects.values()))

    def paired_error(self, other: LabelScore) -> float | None:
        """Standard error of this score minus ``other``'s, paired over the same objects."""
        from twoshot.evaluate.standard_errors import paired_standard_error

        return paired_standard_error(other.objects, self.objects)


def video_labels(
    method: str, seq: VideoSequence, labeled: Sequence[int], engine: PropagationEngine | None = None
) -> np.ndarray:
    """uint8 [T, H, W] labels of every frame of ``seq`` made by ``method`` from the annotation
    PNGs of frames ``labeled`` only (``engine`` for ``bank`` and ``forward``)."""
    masks, _ = load_annotations(seq, sorted(labeled))
    if method == "copy":
        return np.stack([masks[source] for source in assign_sources(seq.num_frames, list(masks))])
    if engine is None:
        raise ValueError(f"method {method!r} needs an engine")
    if method == "bank":
        return engine.propagate(load_frames(seq), masks, direction="bidirectional").masks
    if method == "forward":
        first = min(masks)
        return engine.propagate(load_frames(seq), {first: masks[first]}, direction="forward").masks
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def score_labels(
    method: str,
    sequences: Sequence[VideoSequence],
    budget: Budget,
    labels: Callable[[VideoSequence, list[int]], np.ndarray],
) -> LabelScore:
    """Score ``labels(seq, labeled frame indices) -> uint8 [T, H, W]`` on every budgeted video
    of ``sequences`` (fully annotated: every frame's PNG in ``mask_paths``) against its
    ground truth. UserError if a video's annotation is incomplete."""
    objects: dict[str, float] = {}
    labeled_count = frames = 0
    results = []
    for seq in sequences:
        if seq.name not in budget:
            continue
        if len(seq.mask_paths) != seq.num_frames:
            raise UserError(f"video {seq.name}: scoring labels needs every frame's annotation PNG")
        labeled = resolve_entries(seq, budget[seq.name])
        gt = np.stack([read_mask(seq.mask_paths[t])[0] for t in range(seq.num_frames)])
        scores = evaluate_sequence(labels(seq, labeled), gt, name=seq.name, frame_names=seq.frame_names)
        results.append(scores)
        for obj in scores.objects():
            objects[obj.name] = (obj.j_mean + obj.f_mean) / 2
        labeled_count += len(labeled)
        frames += seq.num_frames
    if not results:
        raise UserError("the budget labels none of the dataset's videos")
    from twoshot.evaluate.metrics import EvalResult

    result = EvalResult.from_sequences(results)
    return LabelScore(method, float(result.j_and_f), objects, labeled_count, frames)


def score_method(
    method: str,
    sequences: Sequence[VideoSequence],
    budget: Budget,
    engine: PropagationEngine | None = None,
    name: str | None = None,
) -> LabelScore:
    """:func:`score_labels` of :func:`video_labels` with ``method`` (reported as ``name``)."""
    return score_labels(
        name or method, sequences, budget, lambda seq, labeled: video_labels(method, seq, labeled, engine)
    )


def score_bank_folder(bank: Path, sequences: Sequence[VideoSequence], budget: Budget) -> LabelScore:
    """Score a bank written on disk (``bank/<video>/<frame>.png``, :mod:`twoshot.bank`)."""

    def read(seq: VideoSequence, labeled: list[int]) -> np.ndarray:
        return np.stack([read_mask(bank / seq.name / f"{name}.png")[0] for name in seq.frame_names])

    return score_labels("bank", sequences, budget, read)


def format_scores(scores: Sequence[LabelScore], reference: LabelScore | None = None) -> str:
    """A Markdown table: J&F x 100 ± standard error over objects, and the paired difference
    to ``reference`` ± its standard error."""
    lines = ["| labels | J&F | vs. " + (reference.method if reference else "-") + " |", "|---|---:|---:|"]
    for score in scores:
        error = score.standard_error()
        text = f"{100 * score.j_and_f:.1f}" + (f" ± {100 * error:.1f}" if error is not None else "")
        diff = "-"
        if reference is not None and score is not reference:
            paired = score.paired_error(reference)
            diff = f"{100 * (score.j_and_f - reference.j_and_f):+.1f}"
            diff += f" ± {100 * paired:.1f}" if paired is not None else ""
        lines.append(f"| {score.method} | {text} | {diff} |")
    return "\n".join(lines)


def demo_bank_value(run: Path, data: Path, train_split: str, inference: InferenceConfig) -> str:
    """The bank's value in a finished ``twoshot demo`` run, as Markdown: J&F against the
    training ground truth of the run's bank (``run/bank``), of copying each frame's nearest
    labeled mask, and of forward propagation from the first labeled frame with the
    static-pretrained model (``run/static/final.pth``, skipped when absent), then the frames
    labeled and the frames the bank masks. Written to ``run/bank_value.md`` (atomically) and
    reused from there when present."""
    from twoshot.data.budget import load_budget
    from twoshot.data.readers import open_dataset
    from twoshot.fsutil import atomic_open

    path = run / "bank_value.md"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    sequences = open_dataset("davis", data, train_split)
    budget = load_budget(run / "budget.json")
    rows = [score_bank_folder(run / "bank", sequences, budget)]
    rows[0].method = "two-shot pseudo-label bank (phase-1 model)"
    rows.append(score_method("copy", sequences, budget, name="copy of the nearest labeled mask"))
    static = run / "static" / "final.pth"
    if static.is_file():
        from twoshot.inference.predictor import load_for_inference

        model, _ = load_for_inference(static)
        engine = PropagationEngine(model, inference)
        rows.append(
            score_method(
                "forward",
                sequences,
                budget,
                engine,
                name="static model, forward from the first labeled frame",
            )
        )
    labeled, frames = rows[0].labeled_frames, rows[0].frames
    text = (
        "Labels of the training videos against their ground truth (J&F ± standard error over objects;\n"
        "difference to the bank ± its paired standard error):\n\n"
        + format_scores(rows, rows[0])
        + f"\n\nLabeled by hand: {labeled} of {frames} frames ({100 * labeled / max(frames, 1):.1f}%); "
        f"the bank masks the other {frames - labeled} frames.\n"
    )
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return text
