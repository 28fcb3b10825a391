"""``twoshot demo``: generated data -> the whole two-shot pipeline -> table, plot, overlays."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from twoshot.commands.common import add_progress_argument
from twoshot.demo import demo_models, run_demo
from twoshot.report import format_report

HELP = "run the whole two-shot method on generated videos (about 10 min on 2 CPU cores)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --quick, --model, --seed, --device."""
    parser.add_argument(
        "--out", default=None, help="demo folder (default: ./twoshot-demo, with --quick ./twoshot-demo-quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 2-minute smoke run on less data with short training"
    )
    parser.add_argument(
        "--model",
        choices=demo_models(),
        default="stcn",
        help="stcn (the tiny preset), cutie (cutie-tiny) or sam2 (sam2-toy), the last two with "
        "shorter schedules; any model but "
        "stcn writes to ./twoshot-demo-<model> by default",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the results table, stage times and output paths. Returns 0."""
    start = time.perf_counter()
    report, pictures = run_demo(
        args.out,
        quick=args.quick,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        model=args.model,
    )
    print()
    print(format_report(report))
    bank_value = Path(report.out) / "bank_value.md"
    if bank_value.is_file():
        print(bank_value.read_text(encoding="utf-8"))
    print("time per stage:")
    for stage, seconds in report.stage_seconds.items():
        print(f"  {stage:<16} {seconds:7.1f} s")
    print(f"  {'total (this run)':<16} {time.perf_counter() - start:7.1f} s")
    print()
    print(f"report:   {report.out}/report.md")
    for path in pictures:
        print(f"picture:  {path}")
    return 0
