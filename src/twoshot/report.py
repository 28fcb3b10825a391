"""The report of a pipeline run: each model's scores, the naive-to-full gap with its standard
error and the share of it two-shot training recovers, as ``report.json`` and ``report.md``."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from twoshot.data.budget import Budget
from twoshot.evaluate.standard_errors import paired_standard_error, standard_error
from twoshot.fsutil import atomic_open, write_json


def naive_title(budget: Budget) -> str:
    """The naive baseline's title: "naive K-shot ..." when every video of ``budget`` has K
    labeled frames (e.g. "naive 2-shot"), "naive k-shot ..." when the videos' counts differ."""
    counts = {len(frames) for frames in budget.values()}
    shots = str(counts.pop()) if len(counts) == 1 else "k"
    return f"naive {shots}-shot (labeled frames only)"


# The naive baseline's title depends on the budget: naive_title.
MODEL_TITLES = {
    "static": "static pretraining only",
    "phase1": "two-shot phase 1 (teacher)",
    "phase2": "two-shot (phase 2 on the bank)",
    "full": "full supervision",
}


@dataclass
class ModelScore:
    """One trained model's validation result."""

    name: str
    title: str
    j_and_f: float
    j_mean: float
    f_mean: float
    labeled_share: float  # share of training frames whose annotation the model used
    train_seconds: float | None
    # J&F of each validation object, keyed "<video>_<object id>" as davis2017-evaluation's
    # per-sequence rows; empty for scores cached before they were kept.
    objects: dict[str, float] = field(default_factory=dict)

    def standard_error(self) -> float | None:
        """Standard error of :attr:`j_and_f` over the validation objects (0..1 scale), or None
        with fewer than two per-object scores."""
        return standard_error(list(self.objects.values()))


# The share recovered is only reported for a naive-to-full gap of at least 1 J&F point and
# at least twice the gap's standard error over the validation objects: below that it is
# noise (one demo model's score moved by 3 J&F between two sets of validation videos).
MIN_GAP = 0.01
SIGNIFICANT_ERRORS = 2.0


@dataclass
class PipelineReport:
    """What :func:`run_pipeline` returns and writes as ``report.json``."""

    out: str
    budget: str
    labeled_frames: int
    total_frames: int
    models: list[ModelScore] = field(default_factory=list)
    bank_j_and_f: float | None = None  # pseudo-label bank vs ground truth (evaluation only)
    # With twoshot.rounds >= 2: each round's bank vs ground truth, round 1 first (as above).
    round_banks: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def score(self, name: str) -> ModelScore | None:
        """The score of model ``name``, if it was trained and evaluated."""
        return next((m for m in self.models if m.name == name), None)

    def gap(self) -> float | None:
        """J&F of full supervision minus naive training (0..1 scale), if both were scored."""
        naive, full = self.score("naive"), self.score("full")
        return None if not (naive and full) else full.j_and_f - naive.j_and_f

    def gap_error(self) -> float | None:
        """Standard error of :meth:`gap` over the validation objects (paired: both models
        segment the same objects), or None without per-object scores."""
        return estimate_gap([self]).error

    def gap_is_measurable(self) -> bool:
        """Whether full supervision leads naive training by at least MIN_GAP and by at least
        SIGNIFICANT_ERRORS standard errors (when per-object scores are there to say)."""
        return estimate_gap([self]).measurable

    def gap_recovered(self) -> float | None:
        """(two-shot - naive) / (full - naive): the share of the naive-to-full gap recovered.

        None unless all three were scored and the gap is measurable
        (:meth:`gap_is_measurable`): the ratio over a gap within the noise means nothing.
        """
        return estimate_gap([self]).recovered


@dataclass(frozen=True)
class GapEstimate:
    """The naive-to-full gap of one run, or pooled over runs that differ only in their
    training seed (J&F on the 0..1 scale).

    gap: mean J&F of full supervision minus mean J&F of naive training; error: its standard
    error (see :func:`estimate_gap`), None when nothing measures it; recovered: the share of
    the gap two-shot training recovers, None unless the gap is measurable; runs: how many
    runs held both baselines.
    """

    gap: float | None
    error: float | None
    recovered: float | None
    runs: int

    @property
    def measurable(self) -> bool:
        """Whether the gap is at least MIN_GAP and at least SIGNIFICANT_ERRORS errors."""
        return self.gap is not None and self.gap >= max(MIN_GAP, SIGNIFICANT_ERRORS * (self.error or 0.0))


def mean_object_scores(scores: list[ModelScore]) -> dict[str, float]:
    """Per-object J&F averaged over several runs of one model: {object: mean}, over the
    objects every run scored."""
    shared = set.intersection(*(set(s.objects) for s in scores)) if scores else set()
    return {k: statistics.fmean(s.objects[k] for s in scores) for k in sorted(shared)}


def estimate_gap(reports: list[PipelineReport]) -> GapEstimate:
    """The naive-to-full gap over ``reports``, runs of one experiment with different training
    seeds (one report: that run's gap).

    The error adds in quadrature the validation objects' paired standard error of the mean
    models (per-object scores averaged over the runs) and, with two or more runs, the
    standard error of the runs' own gaps, which measures how much training seeds move it.
    The share recovered uses the mean two-shot (phase 2) score of the same runs.
    """
    runs = [r for r in reports if r.score("naive") and r.score("full")]
    if not runs:
        return GapEstimate(None, None, None, 0)
    naive, full, two = (_scores(runs, name) for name in ("naive", "full", "phase2"))
    naive_mean = statistics.fmean(s.j_and_f for s in naive)
    gap = statistics.fmean(s.j_and_f for s in full) - naive_mean
    run_gaps = [f.j_and_f - n.j_and_f for n, f in zip(naive, full)]
    parts = [
        e
        for e in (
            paired_standard_error(mean_object_scores(naive), mean_object_scores(full)),
            standard_error(run_gaps),
        )
        if e is not None
    ]
    error = math.sqrt(sum(e * e for e in parts)) if parts else None
    estimate = GapEstimate(gap, error, None, len(runs))
    if not estimate.measurable or len(two) < len(runs):
        return estimate
    return replace(estimate, recovered=(statistics.fmean(s.j_and_f for s in two) - naive_mean) / gap)


def _scores(reports: list[PipelineReport], name: str) -> list[ModelScore]:
    """The scores of model ``name`` in the reports that hold it, in order."""
    return [score for r in reports if (score := r.score(name)) is not None]


def gap_note(
    gap: float | None, recovered: float | None, error: float | None = None, naive: str = "naive training"
) -> str | None:
    """The report's sentence on the naive-to-full gap, or None if it was not measured.

    gap: full supervision minus ``naive`` in J&F (0..1 scale); recovered: the share of it
    that two-shot training recovered (:meth:`PipelineReport.gap_recovered`), None when the
    gap is not measurable, in which case the sentence gives the gap and says why there is no
    share; error: the gap's standard error over the validation objects, if known.
    """
    if gap is None:
        return None
    spread = "" if error is None else f" ± {100 * error:.1f}"
    if recovered is not None:
        return (
            f"Two-shot recovers {100 * recovered:.0f}% of the gap between {naive} and full "
            f"supervision ({100 * gap:.1f}{spread} J&F)."
        )
    side = "above" if gap >= 0 else "below"
    needed = f"at least {100 * MIN_GAP:.0f} J&F"
    if error is not None:
        needed += (
            f" and {SIGNIFICANT_ERRORS:.0f} standard errors ({SIGNIFICANT_ERRORS * 100 * error:.1f} J&F)"
        )
    return (
        f"Full supervision scores {100 * abs(gap):.1f}{spread} J&F {side} {naive} here; "
        f"measuring how much of the gap two-shot training recovers needs a gap of {needed}. "
        "Within this noise, labels do not measurably limit these models."
    )


def format_report(report: PipelineReport) -> str:
    """The report as a Markdown table (J&F x 100, share of labeled frames, training time)."""
    lines = ["| model | J&F | J | F | labeled frames | training time |", "|---|---:|---:|---:|---:|---:|"]
    for m in report.models:
        seconds = f"{m.train_seconds:.0f} s" if m.train_seconds is not None else "-"
        lines.append(
            f"| {m.title} | {100 * m.j_and_f:.1f} | {100 * m.j_mean:.1f} | "
            f"{100 * m.f_mean:.1f} | {100 * m.labeled_share:.1f}% | {seconds} |"
        )
    notes = [
        f"Labeled frames: {report.labeled_frames} of {report.total_frames} "
        f"({100 * report.labeled_frames / max(report.total_frames, 1):.1f}%)."
    ]
    if report.round_banks:
        banks = ", ".join(f"{100 * j:.1f} (round {r})" for r, j in enumerate(report.round_banks, start=1))
        notes.append(f"Pseudo-label banks vs. ground truth on the training videos: J&F {banks}.")
    elif report.bank_j_and_f is not None:
        notes.append(
            f"Pseudo-label bank vs. ground truth on the training videos: J&F {100 * report.bank_j_and_f:.1f}."
        )
    note = (
        gap_note(report.gap(), report.gap_recovered(), report.gap_error()) if report.score("phase2") else None
    )
    if note:
        notes.append(note)
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_report(report: PipelineReport, out: Path) -> None:
    """Write ``report.json`` and ``report.md`` into ``out`` atomically."""
    write_json(out / "report.json", asdict(report))
    with atomic_open(out / "report.md", "w", encoding="utf-8") as handle:
        handle.write("# twoshot pipeline report\n\n" + format_report(report))
