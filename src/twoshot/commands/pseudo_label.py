"""``twoshot pseudo-label``: the two-shot pseudo-label bank of a training set."""

from __future__ import annotations

import argparse
from pathlib import Path

from twoshot.commands.infer import add_model_arguments, load_model_and_config
from twoshot.errors import UserError

HELP = "propagate each video's labeled frames both ways into a bank of dense pseudo labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``twoshot pseudo-label``."""
    parser.add_argument("--data", required=True, metavar="PATH", help="dataset root")
    parser.add_argument(
        "--dataset",
        choices=("davis", "youtube", "generic"),
        default=None,
        help="layout of --data (default: detected)",
    )
    parser.add_argument("--split", default="train", help="split to label (default train)")
    parser.add_argument(
        "--budget", required=True, metavar="JSON", help="label budget {video: [labeled frame files]}"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="BANK",
        help="bank folder (resumed if it holds a bank made with the same inputs)",
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="also write max-probability maps (BANK/<video>/confidence/*.png)",
    )
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build (or resume) the bank and print a summary. Returns 0."""
    from twoshot.data.readers import detect_layout, open_dataset
    from twoshot.inference.pseudo_label import build_bank

    layout = args.dataset or detect_layout(args.data, args.split)
    if layout == "video":
        raise UserError(
            f"{args.data}: pseudo-labelling needs a dataset folder (davis, youtube "
            "or generic), not a video file"
        )
    split: str | None = args.split
    if layout == "generic" and not (Path(args.data) / args.split).is_dir():
        split = None  # a generic root holds JPEGImages/ itself
    sequences = open_dataset(layout, args.data, split)
    model, config = load_model_and_config(args)
    summary = build_bank(
        model,
        sequences,
        args.budget,
        args.out,
        config,
        checkpoint=args.checkpoint,
        confidence=args.confidence,
        progress=not args.no_progress,
    )
    if summary.manifest is not None or summary.written:
        print(
            f"done: {summary.written} videos written, skipped {summary.skipped} (already in the "
            f"bank or another process's), {summary.frames} frames in {summary.seconds:.1f} s "
            f"({summary.frames_per_second:.1f} frames/s) -> {summary.out}"
        )
    return 0
