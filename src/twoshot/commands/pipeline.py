"""``twoshot pipeline``: static pretraining -> phase 1 -> bank -> phase 2 -> evaluation."""

from __future__ import annotations

import argparse

from twoshot.commands.common import add_config_arguments, add_progress_argument, config_from_args
from twoshot.report import format_report

HELP = "run the whole two-shot method with baselines and write a report (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE with a ``pipeline`` section, plus shortcuts for its main keys."""
    add_config_arguments(parser, default_preset="stcn")
    parser.add_argument("--data", help="dataset root (pipeline.data)")
    parser.add_argument("--out", help="run folder (pipeline.out)")
    parser.add_argument("--budget", help="label-budget JSON (pipeline.budget)")
    parser.add_argument("--static-data", help="image/mask pairs for static pretraining")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the pipeline and print the report table. Returns 0."""
    config = config_from_args(args)
    for option, key in (
        ("data", "data"),
        ("out", "out"),
        ("budget", "budget"),
        ("static_data", "static_data"),
        ("device", "device"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(config.pipeline, key, value)
    from twoshot.pipeline import run_pipeline  # torch: not at import, which `twoshot --help` does

    report = run_pipeline(config, progress=not args.no_progress)
    print()
    print(format_report(report))
    print(f"report: {report.out}/report.md and report.json")
    return 0
