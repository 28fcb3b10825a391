"""The whole two-shot method as one resumable run (DESIGN §2).

Steps, each writing under ``pipeline.out`` and skipped when its output is complete, so a run
killed at any point resumes where it stopped (a training step resumes from its checkpoint):

1. ``budget``   the label budget (given, or made from shots / strategy / seed);
2. ``static``   optional static-image pretraining (all later training starts from it);
3. ``phase1``   semi-supervised training with the EMA teacher;
4. ``bank``     the pseudo-label bank from phase 1's model (bidirectional propagation);
5. ``phase2``   retraining on the bank with online refinement (``twoshot.write_back``:
                also rewriting the bank's PNGs of unlabeled frames);
5b. ``round-r`` with ``twoshot.rounds`` >= 2, self-training round r = 2, 3, ...: a bank
                (``round-r/bank``) from the previous round's phase-2 model, and phase 2
                again (``round-r/phase2``) on it from the same initial weights;
6. baselines    ``naive`` (labeled frames only) and ``full`` (every frame, when the data has
                full annotations), trained with the same schedule;
7. ``evaluate`` inference on the validation videos and DAVIS J&F for every model;
8. ``report``   ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twoshot.config import Config, config_differences, describe_differences, to_dict
from twoshot.config_checks import check_config, check_pipeline_config, check_stage
from twoshot.data.budget import Budget, apply_budget, load_budget, make_budget, save_budget, summarize_budget
from twoshot.data.layout import VideoSequence
from twoshot.data.readers import detect_kind, open_dataset
from twoshot.devices import resolve_device
from twoshot.errors import UserError
from twoshot.fsutil import atomic_open, write_json

if TYPE_CHECKING:  # the recipes import torch; the pipeline module does not need to
    from twoshot.train.recipes import StageRecipe

TRAINED_MODELS = ("static", "phase1", "phase2", "naive", "full")
# Keys that change how a run executes, not what it computes: a run may resume with others.
# The data may move (same videos, another path); adding a baseline trains only that one.
RUNTIME_KEYS = frozenset(
    {
        "pipeline.out",
        "pipeline.data",
        "pipeline.baselines",
        "pipeline.device",
        "pipeline.eval_workers",
        *(
            f"{stage}.{key}"
            for stage in ("static", "main")
            for key in ("num_workers", "log_every", "save_every", "image_every")
        ),
        "inference.device",
        "inference.key_batch",
        "inference.compile",
        # More rounds only add steps after the finished ones (none of which reads it); fewer
        # leave the later rounds' folders unreported.
        "twoshot.rounds",
    }
)


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


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt(n)), or
    None with fewer than two values."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def paired_standard_error(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Standard error of mean(b - a) over the keys both hold (per-object scores of two models
    on the same objects), or None with fewer than two shared keys."""
    return standard_error([b[k] - a[k] for k in sorted(a.keys() & b.keys())])


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


class Pipeline:
    """Runs the steps of one configured experiment; see the module docstring."""

    def __init__(self, config: Config, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.config = config
        self.p = config.pipeline
        check_pipeline_config(self.p)
        self.out = Path(self.p.out)
        self.log = log
        self.progress = progress
        self.kind = self.p.dataset or detect_kind(self.p.data, self.p.train_split)
        self.timings_path = self.out / "timings.json"
        self.timings: dict[str, float] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        )
        self._train: list[VideoSequence] | None = None
        self._made_budget: Budget | None = None  # made by preflight, saved by the budget step

    # -- data -------------------------------------------------------------------------------

    @property
    def train_sequences(self) -> list[VideoSequence]:
        """The training videos, every annotation PNG listed (opened only where budgeted)."""
        if self._train is None:
            self._train = open_dataset(self.kind, self.p.data, self.p.train_split)
        return self._train

    def val_sequences(self) -> list[VideoSequence]:
        """The validation videos."""
        return open_dataset(self.kind, self.p.data, self.p.val_split)

    def has_full_annotations(self) -> bool:
        """Whether every training frame has an annotation (full supervision possible)."""
        stride = 5 if self.kind == "youtube" else 1
        return all(len(s.mask_paths) >= -(-s.num_frames // stride) for s in self.train_sequences)

    # -- steps ------------------------------------------------------------------------------

    def _timed(self, name: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        self.log(f"[{name}] running")
        result = work()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        write_json(self.timings_path, self.timings)
        self.log(f"[{name}] done in {self.timings[name]:.1f}s")
        return result

    def budget(self) -> tuple[Path, Budget]:
        """Step 1: the label budget (copied into the run folder so the run is self-contained)."""
        path = self.out / "budget.json"
        if path.is_file():
            return path, load_budget(path)
        if self.p.budget:
            budget = load_budget(self.p.budget)
        elif self._made_budget is not None:
            budget = self._made_budget
        else:
            budget = make_budget(
                self.train_sequences,
                shots=self.p.shots,
                strategy=self.p.budget_strategy,
                seed=self.p.budget_seed,
            )
        apply_budget(self.train_sequences, budget)  # validate before anything trains on it
        save_budget(path, budget)
        return path, budget

    def budgeted(self, budget: Budget) -> list[VideoSequence]:
        """Training videos restricted to the budget's labeled frames."""
        return apply_budget(self.train_sequences, budget)

    def _train_step(
        self,
        name: str,
        stage: str,
        make: Callable[[], tuple[Any, Any]],
        init: Path | str | None,
        folder: Path | None = None,
    ) -> Path:
        """Train model ``name`` (config section ``stage``) on the (dataset, mode) that ``make``
        builds (:func:`_parts` of a recipe) into ``folder`` (default ``out/<name>``) unless its
        weights exist; resumes from a checkpoint."""
        from twoshot.train.trainer import train

        out_dir = folder or self.out / name
        final = out_dir / "final.pth"
        if final.is_file():
            self.log(f"[{name}] complete, skipped ({final})")
            return final

        def work() -> Path:
            dataset, mode = make()
            resume = (out_dir / "checkpoint.pt").is_file()
            return train(
                self.config,
                stage,
                dataset,
                out_dir,
                init=init,
                resume=resume,
                mode=mode,
                device=self.p.device,
                progress=self.progress,
            )

        return self._timed(name, work)

    def static(self) -> Path | None:
        """Step 2: static-image pretraining, when ``static_data`` is given."""
        if self.p.init:
            return Path(self.p.init)
        if not self.p.static_data:
            return None
        from twoshot.train.recipes import static_recipe

        data = self.p.static_data
        assert data is not None  # the pipeline skips the static stage without it
        return self._train_step("static", "static", lambda: _parts(static_recipe(self.config, data)), None)

    def phase1(self, budget: Budget, init: Path | None) -> Path:
        """Step 3: two-shot phase 1 on the budgeted videos."""
        from twoshot.train.recipes import phase1_recipe

        return self._train_step(
            "phase1",
            "main",
            lambda: _parts(phase1_recipe(self.config, self.budgeted(budget), self.kind)),
            init,
        )

    def bank(self, budget_path: Path, weights: Path, round_: int = 1) -> Path:
        """Step 4: the pseudo-label bank from ``weights`` (phase 1's; in self-training round
        ``round_`` >= 2 the previous round's phase 2's, into ``round-<r>/bank``)."""
        from twoshot.inference.pseudo_label import build_bank
        from twoshot.model import load_model

        bank = self._round_folder(round_) / "bank"
        step = "bank" if round_ == 1 else f"{round_name(round_)} bank"
        manifest = bank / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete":
            self.log(f"[{step}] complete, skipped ({bank})")
            return bank

        def work() -> Path:
            model = load_model(weights, self.config.model)
            build_bank(
                model,
                self.train_sequences,
                budget_path,
                bank,
                self.config.inference,
                checkpoint=weights,
                device=resolve_device(self.p.device),
                progress=self.progress,
            )
            return bank

        return self._timed(step, work)

    def phase2(self, bank: Path, init: Path | None, round_: int = 1) -> Path:
        """Step 5: retraining on the pseudo-label bank with online refinement (model
        ``phase2``; in self-training round ``round_`` >= 2 model ``round-<r>`` in
        ``round-<r>/phase2``)."""
        from twoshot.train.recipes import phase2_recipe

        name = "phase2" if round_ == 1 else round_name(round_)
        return self._train_step(
            name,
            "main",
            lambda: _parts(phase2_recipe(self.config, self.train_sequences, bank)),
            init,
            self._round_folder(round_) / "phase2",
        )

    def _round_folder(self, round_: int) -> Path:
        """Where round ``round_``'s bank and phase 2 live: ``out`` for round 1 (the paper's
        layout, so one-round runs are unchanged), ``out/round-<r>`` after."""
        return self.out if round_ == 1 else self.out / round_name(round_)

    def naive(self, budget: Budget, init: Path | None) -> Path:
        """Baseline: supervised training on the labeled frames only."""
        from twoshot.train.recipes import naive_recipe

        return self._train_step(
            "naive", "main", lambda: _parts(naive_recipe(self.config, self.budgeted(budget), self.kind)), init
        )

    def full(self, init: Path | None) -> Path:
        """Baseline: supervised training on every annotated frame."""
        from twoshot.train.recipes import full_recipe

        return self._train_step(
            "full", "main", lambda: _parts(full_recipe(self.config, self.train_sequences, self.kind)), init
        )

    def predict(self, name: str, weights: Path) -> Path:
        """Segment the validation videos with model ``name``; DAVIS-layout PNGs."""
        from twoshot.inference.predict import predict_sequences
        from twoshot.model import load_model

        out = self.out / "predictions" / name
        done = out / ".complete"
        if done.is_file():
            return out

        def work() -> Path:
            model = load_model(weights, self.config.model)
            predict_sequences(
                model,
                self.val_sequences(),
                out,
                self.config.inference,
                device=resolve_device(self.p.device),
                progress=self.progress,
            )
            done.write_text("ok\n")
            return out

        return self._timed(f"infer:{name}", work)

    def evaluate(self, name: str, predictions: Path) -> dict[str, Any]:
        """J&F of one model's predictions on the validation videos (cached as JSON): the
        global "J&F-Mean", "J-Mean", "F-Mean", and "objects", each object's J&F."""
        from twoshot.evaluate.folders import evaluate_folders

        path = self.out / "eval" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        gt = self._annotation_root(self.p.val_split)
        result = evaluate_folders(
            predictions, gt, [s.name for s in self.val_sequences()], workers=self.p.eval_workers
        )
        scores: dict[str, Any] = {k: float(result.scores[k]) for k in ("J&F-Mean", "J-Mean", "F-Mean")}
        scores["objects"] = {o.name: (o.j_mean + o.f_mean) / 2 for o in result.objects}
        write_json(path, scores)
        return scores

    def _annotation_root(self, split: str) -> Path:
        """The folder of per-video ground-truth folders for ``split``."""
        root = Path(self.p.data)
        if self.kind == "davis":
            return root / "Annotations" / "480p"
        if self.kind == "youtube":
            return root / split / "Annotations"
        return root / "Annotations"

    def evaluate_bank(self, bank: Path, round_: int = 1) -> float | None:
        """J&F of round ``round_``'s pseudo-label bank against full training annotations, if
        they exist.

        Reported for insight only; no training step ever reads these annotations.
        """
        if not self.has_full_annotations():
            return None
        from twoshot.evaluate.folders import evaluate_folders

        path = self.out / "eval" / ("bank.json" if round_ == 1 else f"{round_name(round_)}-bank.json")
        if path.is_file():
            return float(json.loads(path.read_text())["J&F-Mean"])
        result = evaluate_folders(
            bank,
            self._annotation_root(self.p.train_split),
            [s.name for s in self.train_sequences],
            workers=self.p.eval_workers,
        )
        write_json(path, {"J&F-Mean": result.j_and_f})
        return float(result.j_and_f)

    # -- the whole run ----------------------------------------------------------------------

    def _check_same_run(self) -> None:
        """UserError if ``out`` holds a run made with another configuration: its finished
        steps would be skipped and reported as if this configuration had made them."""
        saved_path = self.out / "config.json"
        if not saved_path.is_file():
            return
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{saved_path}: cannot read the configuration of the run in this "
                f"folder ({exc}); use another output folder or delete it"
            ) from None
        changed = config_differences(saved, to_dict(self.config), RUNTIME_KEYS)
        if changed:
            raise UserError(
                f"{saved_path}: {self.out} holds a run with another configuration, "
                f"whose finished steps would be reused ({describe_differences(changed)}); "
                "use another output folder, or delete it to start over"
            )

    def preflight(self) -> None:
        """UserError naming the key, file or split if any stage would fail on its input: the
        configuration (with the run's own rules: ``lr_steps`` within each trained stage's
        ``iterations``, ``twoshot.end_warm`` before ``main.iterations``), the training and
        validation splits, the budget (it must fit the training videos), the static data and
        the initial weights. Reads folder listings and the budget only; writes nothing."""
        check_config(self.config)
        if self.p.static_data and not self.p.init:
            check_stage(self.config, "static")
        check_stage(self.config, "main", two_shot=True)
        if self.p.init and not Path(self.p.init).is_file():
            raise UserError(f"pipeline.init: {self.p.init}: weights file not found")
        if self.p.static_data and not self.p.init and not Path(self.p.static_data).is_dir():
            raise UserError(f"pipeline.static_data: {self.p.static_data}: folder not found")
        if not self.train_sequences:
            raise UserError(
                f"pipeline.train_split: no videos in split {self.p.train_split!r} of {self.p.data}"
            )
        if not self.val_sequences():
            raise UserError(f"pipeline.val_split: no videos in split {self.p.val_split!r} of {self.p.data}")
        saved = self.out / "budget.json"
        if saved.is_file() or self.p.budget:
            source = saved if saved.is_file() else Path(str(self.p.budget))
            budget = load_budget(source)
            try:
                apply_budget(self.train_sequences, budget)
            except UserError as exc:
                raise UserError(f"{source}: {exc}") from None
        else:
            self._made_budget = make_budget(
                self.train_sequences,
                shots=self.p.shots,
                strategy=self.p.budget_strategy,
                seed=self.p.budget_seed,
            )

    def run(self) -> PipelineReport:
        """Check everything (:meth:`preflight`), then run every step (skipping complete ones)
        and write the report. Returns it."""
        self.preflight()
        self._check_same_run()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "config.json", to_dict(self.config))
        budget_path, budget = (
            self._timed("budget", self.budget) if not (self.out / "budget.json").is_file() else self.budget()
        )
        summary = summarize_budget(self.train_sequences, budget)
        init = self.static()
        weights: dict[str, Path] = {}
        if init is not None and self.p.static_data and not self.p.init:
            weights["static"] = init
        weights["phase1"] = self.phase1(budget, init)
        banks = [self.bank(budget_path, weights["phase1"])]
        weights["phase2"] = self.phase2(banks[0], init)
        latest = weights["phase2"]
        for round_ in range(2, self.config.twoshot.rounds + 1):
            # Self-training: the latest model labels the bank, phase 2 starts over on it.
            banks.append(self.bank(budget_path, latest, round_))
            latest = weights[round_name(round_)] = self.phase2(banks[-1], init, round_)
        if "naive" in self.p.baselines:
            weights["naive"] = self.naive(budget, init)
        if "full" in self.p.baselines:
            if self.has_full_annotations():
                weights["full"] = self.full(init)
            else:
                self.log("[full] skipped: the training videos are not fully annotated")

        share = summary.labeled_frames / max(summary.total_frames, 1)
        rounds = {
            round_name(r): f"two-shot round {r} (phase 2 on the bank of round {r - 1}'s model)"
            for r in range(2, self.config.twoshot.rounds + 1)
        }
        titles = {**MODEL_TITLES, "naive": naive_title(budget), **rounds}
        shares = {"static": 0.0, "phase1": share, "phase2": share, "naive": share, "full": 1.0}
        shares.update(dict.fromkeys(rounds, share))
        report = PipelineReport(
            out=str(self.out),
            budget=str(budget_path),
            labeled_frames=summary.labeled_frames,
            total_frames=summary.total_frames,
        )
        order = [*TRAINED_MODELS[:3], *rounds, *TRAINED_MODELS[3:]]  # rounds after phase 2
        for name in order:
            if name not in weights:
                continue
            scores = self.evaluate(name, self.predict(name, weights[name]))
            report.models.append(
                ModelScore(
                    name,
                    titles[name],
                    scores["J&F-Mean"],
                    scores["J-Mean"],
                    scores["F-Mean"],
                    shares[name],
                    self.timings.get(name),
                    scores.get("objects", {}),
                )
            )
        round_banks = [self.evaluate_bank(bank, r) for r, bank in enumerate(banks, start=1)]
        report.bank_j_and_f = round_banks[0]
        if len(banks) > 1:
            report.round_banks = [score for score in round_banks if score is not None]
        report.stage_seconds = dict(self.timings)
        write_report(report, self.out)
        return report


def round_name(round_: int) -> str:
    """Self-training round ``round_``'s folder and model name (rounds >= 2): ``round-<r>``."""
    return f"round-{round_}"


def _parts(recipe: StageRecipe) -> tuple[Any, Any]:
    """(dataset, mode) of a stage recipe (every video stage runs in section ``main``)."""
    return recipe.dataset, recipe.mode


def run_pipeline(config: Config, log: Callable[[str], None] = print, progress: bool = True) -> PipelineReport:
    """Run the configured experiment (see the module docstring) and return its report."""
    return Pipeline(config, log=log, progress=progress).run()


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
