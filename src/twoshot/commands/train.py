"""``twoshot train``: one training stage -- static-image pretraining, full supervision, the naive
2-shot baseline, two-shot phase 1 or phase 2 -- for any model (``model.kind``); each stage's data
and regime come from :mod:`twoshot.train.recipes`, as in ``twoshot pipeline``.

Runs unchanged under ``torchrun --nproc_per_node=N -m twoshot.cli train ...`` (or the
``twoshot`` script): each process trains ``batch_size`` samples per step, so the global batch
is ``batch_size x N``.
"""

from __future__ import annotations

import argparse
import os

from twoshot.commands.common import add_config_arguments, add_progress_argument, config_from_args

HELP = "train one stage: static, full (alias main), naive, phase1 (--budget) or phase2 (--bank)"

DATASET_KINDS = ("davis", "youtube", "generic", "static")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--stage, --data, --dataset, --split, --budget, --bank, --out, --init, --resume, --device,
    config args."""
    parser.add_argument(
        "--stage",
        choices=("static", "main", "full", "naive", "phase1", "phase2"),
        required=True,
        help="static: 3-frame clips warped from image/mask pairs; full (or main): clips from every "
        "annotated frame; naive: from the --budget's labeled frames only; phase1: two-shot phase 1 "
        "(--budget); phase2: two-shot phase 2 on a pseudo-label --bank",
    )
    parser.add_argument("--data", required=True, metavar="PATH", help="dataset folder")
    parser.add_argument(
        "--dataset",
        choices=DATASET_KINDS,
        default=None,
        help="layout of --data (default: static for --stage static, else detected from the folder)",
    )
    parser.add_argument(
        "--split", default=None, help="DAVIS ImageSets split or YouTube-VOS sub-folder, e.g. train"
    )
    parser.add_argument(
        "--budget",
        metavar="JSON",
        default=None,
        help="label budget (video -> labeled frame names): required by naive and phase1; with "
        "phase2 it is checked against the bank",
    )
    parser.add_argument(
        "--bank",
        metavar="DIR",
        default=None,
        help="pseudo-label bank made by `twoshot pseudo-label` (phase2)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: checkpoint.pt, final.pth, log.jsonl, tensorboard/",
    )
    parser.add_argument(
        "--init",
        metavar="WEIGHTS",
        default=None,
        help="start from these weights (e.g. the static stage's final.pth)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/checkpoint.pt (weights, optimiser, schedule, data position, random states)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_progress_argument(parser)
    add_config_arguments(parser, default_preset="stcn")


def run(args: argparse.Namespace) -> int:
    """Build the stage's recipe (checking budget and bank first) and train; prints the final
    weights' path. Returns 0."""
    from twoshot.config_checks import check_stage
    from twoshot.train.recipes import build_recipe
    from twoshot.train.trainer import train

    config = config_from_args(args)
    # The run's own rules (lr_steps within iterations; the two-shot warm-up before the end)
    # before the data is read.
    section = "static" if args.stage == "static" else "main"
    check_stage(config, section, two_shot=args.stage == "phase1")
    recipe = build_recipe(args.stage, config, args.data, args.dataset, args.split, args.budget, args.bank)
    final = train(
        config,
        recipe.section,
        recipe.dataset,
        args.out,
        init=args.init,
        resume=args.resume,
        regime=recipe.regime,
        device=args.device,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        print(f"final weights: {final}")
    return 0
