"""``twoshot train``: STCN static-image pretraining (stage static) or main training (stage main).

Runs unchanged under ``torchrun --nproc_per_node=N -m twoshot.cli train ...`` (or the
``twoshot`` script): each process trains ``batch_size`` samples per step, so the global batch
is ``batch_size x N``.
"""

from __future__ import annotations

import argparse
import os

from twoshot.commands.common import add_config_arguments, add_progress_argument, config_from_args

HELP = "train STCN: static-image pretraining (--stage static) or video training (--stage main)"

DATASET_KINDS = ("davis", "youtube", "generic", "static")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--stage, --data, --dataset, --split, --out, --init, --resume, --device, config args."""
    parser.add_argument(
        "--stage",
        choices=("static", "main"),
        required=True,
        help="static: 3-frame clips warped from image/mask pairs (STCN stage 0); main: clips from videos",
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
    """Build the stage's dataset and train; prints the final weights' path. Returns 0."""
    from twoshot.train.trainer import build_stage_dataset, train

    config = config_from_args(args)
    dataset = build_stage_dataset(args.stage, config, args.data, args.dataset, args.split)
    final = train(
        config,
        args.stage,
        dataset,
        args.out,
        init=args.init,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        print(f"final weights: {final}")
    return 0
