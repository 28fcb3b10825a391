"""Each training stage's data and regime, built from the configuration in one place.

``twoshot pipeline`` and ``twoshot train --stage ...`` both build their stages here:

- ``static``: 3-frame clips warped from image/mask pairs (section ``static``);
- ``full``: supervised training on every annotated frame (section ``main``; ``main`` is its
  older name on the command line);
- ``naive``: supervised training on the budget's labeled frames only;
- ``phase1``: two-shot phase 1 (labeled-frame warm-up, then EMA-teacher pseudo labels);
- ``phase2``: two-shot phase 2 on a pseudo-label bank, with online refinement.

The budget and the bank are checked against the dataset before anything is built: a budget
naming other videos, a bank made from another dataset or another budget, or an unfinished
bank is refused with a message naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from twoshot.config import Config
from twoshot.data.budget import Budget, apply_budget, load_budget
from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.train.regimes import TrainingRegime

RECIPES = ("static", "full", "naive", "phase1", "phase2")
ALIASES = {"main": "full"}  # the stage's name before the recipes had names of their own


@dataclass
class StageRecipe:
    """What the trainer needs for one stage: the TrainConfig section it runs under
    (``static`` or ``main``), the clip dataset (None when the regime provides it) and the regime
    (None: plain supervised training)."""

    section: str
    dataset: Dataset[Any] | None
    regime: TrainingRegime | None


def clip_options(config: Config, layout: str) -> dict[str, Any]:
    """VOSClipDataset keyword arguments of the main section: first max skip of the curriculum,
    seed, clip length, objects per clip, and YouTube-VOS's every-5th-frame annotation stride."""
    cfg = config.main
    return {
        "max_skip": cfg.max_skip_values[0],
        "seed": cfg.seed,
        "annotation_stride": DATASET_LAYOUTS[layout].annotation_stride,
        "num_frames": cfg.num_frames,  # samplings full and bank only (Cutie's 8-frame clips)
        "num_objects": cfg.num_objects,
    }


def static_recipe(config: Config, data: str | Path) -> StageRecipe:
    """Static-image pretraining on the image/mask pairs under ``data``."""
    from twoshot.data.static_augment import StaticClipAugment
    from twoshot.data.static_clips import StaticClipDataset

    cfg = config.static
    augment = StaticClipAugment(cfg.crop_size, translate=cfg.translate)
    dataset = StaticClipDataset(
        data, cfg.crop_size, seed=cfg.seed, augment=augment, num_objects=cfg.num_objects
    )
    return StageRecipe("static", dataset, None)


def full_recipe(config: Config, sequences: Sequence[VideoSequence], layout: str) -> StageRecipe:
    """Supervised training on every annotated frame of ``sequences``."""
    from twoshot.data.vos_clips import VOSClipDataset

    dataset = VOSClipDataset(
        sequences, config.main.crop_size, sampling="full", **clip_options(config, layout)
    )
    return StageRecipe("main", dataset, None)


def naive_recipe(config: Config, budgeted: Sequence[VideoSequence], layout: str) -> StageRecipe:
    """Supervised training on the labeled frames only (``budgeted``: :func:`apply_budget`'s)."""
    from twoshot.data.vos_clips import VOSClipDataset

    options = clip_options(config, layout)
    dataset = VOSClipDataset(budgeted, config.main.crop_size, sampling="labeled_only", **options)
    return StageRecipe("main", dataset, None)


def phase1_recipe(config: Config, budgeted: Sequence[VideoSequence], layout: str) -> StageRecipe:
    """Two-shot phase 1 on the budgeted videos (the regime switches datasets at ``end_warm``)."""
    from twoshot.data.vos_clips import VOSClipDataset
    from twoshot.train.phases import Phase1Regime

    crop, options = config.main.crop_size, clip_options(config, layout)
    warm = VOSClipDataset(budgeted, crop, sampling="labeled_only", **options)
    clips = VOSClipDataset(
        budgeted, crop, sampling="phase1", labeled_clip_share=config.twoshot.labeled_clip_share, **options
    )
    return StageRecipe("main", None, Phase1Regime(warm, clips, config.twoshot))


def phase2_recipe(config: Config, sequences: Sequence[VideoSequence], bank: str | Path) -> StageRecipe:
    """Two-shot phase 2 on the pseudo-label bank ``bank`` of the training videos ``sequences``."""
    from twoshot.bank import bank_sequences
    from twoshot.data.vos_clips import VOSClipDataset
    from twoshot.train.phases import Phase2Regime

    videos = bank_sequences(list(sequences), Path(bank))
    options = {**clip_options(config, "davis"), "annotation_stride": 1}  # the bank labels every frame
    dataset = VOSClipDataset(videos, config.main.crop_size, sampling="bank", **options)
    # With twoshot.write_back the regime rewrites the bank's PNGs of unlabeled frames.
    return StageRecipe("main", dataset, Phase2Regime(config.twoshot, bank=bank, videos=videos))


def budgeted_videos(
    sequences: Sequence[VideoSequence], budget: Budget, path: str | Path
) -> list[VideoSequence]:
    """The videos restricted to the budget's labeled frames; UserError naming ``path`` when
    the budget does not fit the dataset."""
    try:
        return apply_budget(sequences, budget)
    except UserError as exc:
        raise UserError(f"{path}: this budget does not fit the dataset: {exc}") from exc


def build_recipe(
    stage: str,
    config: Config,
    data: str | Path,
    layout: str | None = None,
    split: str | None = None,
    budget: str | Path | None = None,
    bank: str | Path | None = None,
) -> StageRecipe:
    """Stage ``stage`` (one of :data:`RECIPES`) from a dataset folder, as ``twoshot train`` runs it.

    data / layout / split: the training data (layout detected when None; ``static`` for the
    static stage). budget: label-budget JSON (naive, phase1, phase2: required for naive and
    phase1; for phase2 it is checked against the bank). bank: the pseudo-label bank (phase2,
    required). ``main`` is accepted for ``full``. Raises UserError naming the file for a
    missing or mismatched budget or bank, before anything is written.
    """
    from twoshot.data.readers import detect_layout, open_dataset

    name, stage = stage, ALIASES.get(stage, stage)
    if stage not in RECIPES:
        raise UserError(f"unknown training stage {name!r}; choose one of: {', '.join(RECIPES)}")
    if stage == "static":
        if layout not in (None, "static"):
            raise UserError(
                f"--dataset {layout} does not fit --stage static: it trains on image/mask pairs "
                "(--dataset static)"
            )
        if budget is not None or bank is not None:
            raise UserError("--budget and --bank do not fit --stage static (image/mask pairs)")
        return static_recipe(config, data)
    if layout == "static":
        raise UserError(f"--dataset static does not fit --stage {name}: it trains on videos")
    if stage in ("naive", "phase1") and budget is None:
        raise UserError(f"--stage {stage} needs --budget (the label budget JSON)")
    if stage == "phase2" and bank is None:
        raise UserError(
            "--stage phase2 needs --bank (the pseudo-label bank folder made by `twoshot pseudo-label`)"
        )
    if stage != "phase2" and bank is not None:
        raise UserError(f"--bank is only for --stage phase2, not {stage}")
    if stage == "full" and budget is not None:
        raise UserError(f"--budget does not fit --stage {name} (it trains on every annotated frame)")
    layout = layout or detect_layout(data, split)
    sequences = open_dataset(layout, data, split)
    if stage == "full":
        return full_recipe(config, sequences, layout)
    if stage == "phase2":
        assert bank is not None
        from twoshot.bank import check_bank

        check_bank(bank, sequences, budget)
        return phase2_recipe(config, sequences, bank)
    assert budget is not None
    budgeted = budgeted_videos(sequences, load_budget(budget), budget)
    if stage == "naive":
        return naive_recipe(config, budgeted, layout)
    return phase1_recipe(config, budgeted, layout)


def build_stage_dataset(
    stage: str, config: Config, data: str | Path, layout: str | None = None, split: str | None = None
) -> Dataset[Any]:
    """The stage's clip dataset from a folder on disk (the ``static`` or ``full`` recipe of
    :mod:`twoshot.train.recipes`).

    static: StaticClipDataset(data) (image/mask pairs); main: VOSClipDataset(sampling "full")
    over ``open_dataset(layout, data, split)``, layout auto-detected when None, YouTube-VOS with
    its every-5th-frame annotation stride. Crop size, seed and clip length come from the
    stage's TrainConfig. Raises UserError for a missing or unusable dataset.
    """
    from twoshot.train.trainer import stage_config  # the loop imports this module

    stage_config(config, stage)  # static or main
    recipe = build_recipe(stage, config, data, layout, split)
    assert recipe.dataset is not None  # the static and full recipes have their dataset
    return recipe.dataset
