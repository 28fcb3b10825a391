"""The whole two-shot method as one resumable run (DESIGN §2).

Steps, each writing under ``pipeline.out`` and skipped when its output is complete, so a run
killed at any point resumes where it stopped (a training step resumes from its checkpoint):

1. ``budget``   the label budget (given, or made from shots / strategy / seed);
2. ``static``   optional static-image pretraining (all later training starts from it);
3. ``phase1``   semi-supervised training with the EMA teacher (skipped with
                ``twoshot.teacher``: a given checkpoint of any model is the teacher);
4. ``bank``     the pseudo-label bank from phase 1's model, or the given teacher
                (bidirectional propagation);
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twoshot.config import Config, config_differences, describe_differences, to_dict
from twoshot.config_checks import check_config, check_pipeline_config, check_stage
from twoshot.data.budget import Budget, apply_budget, load_budget, make_budget, save_budget, summarize_budget
from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.layout import VideoSequence
from twoshot.data.readers import detect_layout, open_dataset
from twoshot.devices import resolve_device
from twoshot.errors import UserError
from twoshot.fsutil import write_json
from twoshot.report import MODEL_TITLES, ModelScore, PipelineReport, naive_title, write_report

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


class Pipeline:
    """Runs the steps of one configured experiment; see the module docstring."""

    def __init__(self, config: Config, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.config = config
        self.p = config.pipeline
        check_pipeline_config(self.p)
        self.out = Path(self.p.out)
        self.log = log
        self.progress = progress
        self.layout = self.p.dataset or detect_layout(self.p.data, self.p.train_split)
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
            self._train = open_dataset(self.layout, self.p.data, self.p.train_split)
        return self._train

    def val_sequences(self) -> list[VideoSequence]:
        """The validation videos."""
        return open_dataset(self.layout, self.p.data, self.p.val_split)

    def has_full_annotations(self) -> bool:
        """Whether every training frame has an annotation (full supervision possible)."""
        stride = DATASET_LAYOUTS[self.layout].annotation_stride
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
        """Train model ``name`` (config section ``stage``) on the (dataset, regime) that ``make``
        builds (:func:`_parts` of a recipe) into ``folder`` (default ``out/<name>``) unless its
        weights exist; resumes from a checkpoint."""
        from twoshot.train.trainer import train

        out_dir = folder or self.out / name
        final = out_dir / "final.pth"
        if final.is_file():
            self.log(f"[{name}] complete, skipped ({final})")
            return final

        def work() -> Path:
            dataset, regime = make()
            resume = (out_dir / "checkpoint.pt").is_file()
            return train(
                self.config,
                stage,
                dataset,
                out_dir,
                init=init,
                resume=resume,
                regime=regime,
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
            lambda: _parts(phase1_recipe(self.config, self.budgeted(budget), self.layout)),
            init,
        )

    def bank(self, budget_path: Path, weights: Path, round_: int = 1, given: bool = False) -> Path:
        """Step 4: the pseudo-label bank from ``weights`` (phase 1's; in self-training round
        ``round_`` >= 2 the previous round's phase 2's, into ``round-<r>/bank``; ``given``:
        the ``twoshot.teacher`` checkpoint, loaded with its own sizes and inference settings)."""
        from twoshot.bank import bank_is_complete
        from twoshot.inference.pseudo_label import build_bank
        from twoshot.model import load_model

        bank = self._round_folder(round_) / "bank"
        step = "bank" if round_ == 1 else f"{round_name(round_)} bank"
        if bank_is_complete(bank):
            self.log(f"[{step}] complete, skipped ({bank})")
            return bank

        def work() -> Path:
            if given:
                from twoshot.train.given_teacher import load_teacher

                model, inference = load_teacher(str(weights))
            else:
                model, inference = load_model(weights, self.config.model), self.config.inference
            build_bank(
                model,
                self.train_sequences,
                budget_path,
                bank,
                inference,
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
            "naive",
            "main",
            lambda: _parts(naive_recipe(self.config, self.budgeted(budget), self.layout)),
            init,
        )

    def full(self, init: Path | None) -> Path:
        """Baseline: supervised training on every annotated frame."""
        from twoshot.train.recipes import full_recipe

        return self._train_step(
            "full", "main", lambda: _parts(full_recipe(self.config, self.train_sequences, self.layout)), init
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
        return DATASET_LAYOUTS[self.layout].annotation_root(self.p.data, split)

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
        validation splits, the budget (it must fit the training videos), the static data,
        the initial weights and the given teacher's. Reads folder listings, the budget and
        the teacher's weights only; writes nothing."""
        check_config(self.config)
        if self.p.static_data and not self.p.init:
            check_stage(self.config, "static")
        teacher = self.config.twoshot.teacher
        check_stage(self.config, "main", two_shot=teacher is None)  # end_warm: phase 1's
        if teacher is not None:
            from twoshot.train.given_teacher import check_teacher

            check_teacher(teacher)
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
        teacher = self.config.twoshot.teacher
        if teacher is None:
            weights["phase1"] = self.phase1(budget, init)
        banks = [self.bank(budget_path, Path(teacher) if teacher else weights["phase1"], given=bool(teacher))]
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
    """(dataset, regime) of a stage recipe (every video stage runs in section ``main``)."""
    return recipe.dataset, recipe.regime


def run_pipeline(config: Config, log: Callable[[str], None] = print, progress: bool = True) -> PipelineReport:
    """Run the configured experiment (see the module docstring) and return its report."""
    return Pipeline(config, log=log, progress=progress).run()
