"""``twoshot synth``: write a generated VOS data set (DAVIS 2017 layout + static image pairs)."""

from __future__ import annotations

import argparse

from twoshot.data.synth import generate_dataset
from twoshot.data.synth_config import SYNTH_PRESETS

HELP = "generate a procedural video data set in the DAVIS 2017 layout (no download needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, the data set's shape, the seed, a difficulty preset and KEY=VALUE knob overrides."""
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: new, empty, or a previous 'twoshot synth' output (which is replaced)",
    )
    parser.add_argument("--videos", type=int, default=40, metavar="N", help="training videos (default: 40)")
    parser.add_argument(
        "--val-videos", type=int, default=10, metavar="M", help="validation videos (default: 10)"
    )
    parser.add_argument("--frames", type=int, default=24, metavar="T", help="frames per video (default: 24)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(96, 96),
        metavar=("H", "W"),
        help="frame height and width in pixels (default: 96 96)",
    )
    parser.add_argument(
        "--objects",
        type=int,
        nargs=2,
        default=(1, 3),
        metavar=("MIN", "MAX"),
        help="annotated objects per video (default: 1 3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="random seed; the same arguments give the same files (default: 0)",
    )
    parser.add_argument(
        "--static-images",
        type=int,
        default=200,
        metavar="K",
        help="static pretraining image + mask pairs under static/ (default: 200)",
    )
    parser.add_argument(
        "--difficulty",
        choices=tuple(SYNTH_PRESETS),
        default="default",
        help="preset of the difficulty knobs (default: default)",
    )
    parser.add_argument(
        "knobs",
        nargs="*",
        metavar="KEY=VALUE",
        help="difficulty knob overrides, e.g. exit_prob=0.5 distractors=1,3 (see docs/synthetic-data.md)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the data set and print where it went and what it holds. Returns 0."""
    config = SYNTH_PRESETS[args.difficulty].with_overrides(args.knobs)
    summary = generate_dataset(
        args.out,
        videos=args.videos,
        frames=args.frames,
        size=tuple(args.size),
        objects=tuple(args.objects),
        seed=args.seed,
        val_videos=args.val_videos,
        static_images=args.static_images,
        config=config,
    )
    h, w = summary.size
    stats = summary.stats
    print(
        f"wrote {summary.out}: {len(summary.train)} train + {len(summary.val)} val videos of "
        f"{summary.frames} frames at {h}x{w}, {summary.static_images} static images, "
        f"{summary.files} files in {summary.seconds:.1f} s"
    )
    print(
        f"object-frames: {stats['occluded']:.0%} occluded, {stats['out_of_frame']:.0%} partly "
        f"or fully out of frame, {stats['absent']:.0%} not visible at all"
    )
    return 0
