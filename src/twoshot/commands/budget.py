"""``twoshot budget``: choose the labeled frames of each training video and save them as JSON."""

from __future__ import annotations

import argparse

from twoshot.data.budget import (
    MODEL_STRATEGIES,
    STRATEGIES,
    Budget,
    make_budget,
    save_budget,
    summarize_budget,
)
from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.layout import VideoSequence
from twoshot.data.readers import detect_layout, open_dataset
from twoshot.errors import UserError

HELP = "choose K labeled frames per video (a label budget) and write them as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --dataset, --split, --resolution, --shots, --strategy, --seed, --out."""
    parser.add_argument("--data", required=True, metavar="PATH", help="dataset root folder")
    parser.add_argument(
        "--dataset",
        choices=("davis", "youtube", "generic"),
        default=None,
        help="layout of --data (default: detected)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split to read (default: train for DAVIS and YouTube-VOS, none for generic folders)",
    )
    parser.add_argument("--resolution", default="480p", help="DAVIS resolution (default: 480p)")
    parser.add_argument(
        "--shots", type=int, default=2, metavar="K", help="labeled frames per video (default: 2)"
    )
    parser.add_argument(
        "--strategy",
        choices=(*STRATEGIES, *MODEL_STRATEGIES),
        default="random",
        help="how frames are chosen among the annotated ones (default: random); uncertainty: "
        "greedily where propagation from the frames chosen so far is least confident; "
        "disagreement: greedily where two propagations from them disagree most (both need --checkpoint)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="weights that propagate for --strategy uncertainty or disagreement (e.g. a phase-1 model)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N for --strategy uncertainty or disagreement (default auto)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--out", required=True, metavar="FILE", help="budget JSON to write")


def run(args: argparse.Namespace) -> int:
    """Read the dataset, make the budget, write it atomically, print a summary. Returns 0."""
    model_based = args.strategy in MODEL_STRATEGIES
    if model_based and not args.checkpoint:
        raise UserError(
            f"--strategy {args.strategy} needs --checkpoint: the model whose propagation it measures"
        )
    if args.checkpoint and not model_based:
        raise UserError(
            f"--checkpoint is used only by --strategy {' or '.join(MODEL_STRATEGIES)}, not {args.strategy}"
        )
    split = args.split
    layout = args.dataset or detect_layout(args.data, split or "train")
    if split is None:
        split = DATASET_LAYOUTS[layout].default_split(args.data, True)
    sequences = open_dataset(layout, args.data, split, resolution=args.resolution)
    if model_based:
        budget = _model_budget(sequences, args)
    else:
        budget = make_budget(sequences, shots=args.shots, strategy=args.strategy, seed=args.seed)
    save_budget(args.out, budget)
    print(
        f"wrote {args.out} ({layout}{'/' + split if split else ''}, {args.strategy}, "
        f"{args.shots} per video, seed {args.seed})"
    )
    print(summarize_budget(sequences, budget, shots=args.shots).text())
    return 0


def _model_budget(sequences: list[VideoSequence], args: argparse.Namespace) -> Budget:
    """Frames suggested by ``args.strategy`` with the propagation of ``args.checkpoint`` (its
    saved inference settings)."""
    import dataclasses

    from twoshot.inference.engine import PropagationEngine
    from twoshot.inference.predictor import load_for_inference
    from twoshot.inference.suggest import check_shots, suggest_budget

    check_shots(sequences, args.shots)  # before the weights are read
    model, config = load_for_inference(args.checkpoint)
    engine = PropagationEngine(model, dataclasses.replace(config, device=args.device))
    return suggest_budget(sequences, args.shots, engine, log=print, strategy=args.strategy)
