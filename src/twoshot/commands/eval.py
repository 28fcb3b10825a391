"""``twoshot eval``: DAVIS 2017 semi-supervised J&F of predicted masks against ground truth."""

from __future__ import annotations

import argparse

from twoshot.commands.common import add_progress_argument
from twoshot.evaluate import (
    evaluate_folders,
    format_global_table,
    format_object_table,
    read_sequence_list,
    write_csv,
)

HELP = "score predicted masks against ground truth (DAVIS 2017 J&F, semi-supervised)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--pred, --gt, --sequences, --csv, --workers, --no-progress."""
    parser.add_argument(
        "--pred", required=True, metavar="DIR", help="predictions: DIR/<video>/<frame>.png indexed PNGs"
    )
    parser.add_argument(
        "--gt",
        required=True,
        metavar="DIR",
        help="ground truth: a DAVIS root (Annotations/480p, ImageSets/2017/"
        "val.txt) or a folder of <video>/<frame>.png folders",
    )
    parser.add_argument(
        "--sequences",
        metavar="FILE",
        help="text file with the videos to score, one per line (default: "
        "the DAVIS val list, or every video folder of --gt)",
    )
    parser.add_argument(
        "--csv",
        metavar="PREFIX",
        help="also write PREFIX_global_results.csv and "
        "PREFIX_per-sequence_results.csv; if PREFIX is a folder (or "
        "ends with /), davis2017-evaluation's global_results-val.csv "
        "and per-sequence_results-val.csv inside it",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes scoring videos in parallel; 0 = one per CPU (default: 1)",
    )
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the global and per-object tables, write the CSVs if asked. Returns 0."""
    sequences = read_sequence_list(args.sequences) if args.sequences else None
    result = evaluate_folders(
        args.pred, args.gt, sequences=sequences, workers=args.workers, progress=not args.no_progress
    )
    # Files first: a failed write must not leave a printed table that looks like success.
    paths = write_csv(result, args.csv) if args.csv else ()
    print(format_global_table(result))
    print()
    print(format_object_table(result))
    for path in paths:
        print(f"wrote {path}")
    return 0
