"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from twoshot.config import Config, load_config, preset_names


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "stcn") -> None:
    """Add --preset, --config and trailing ``section.key=value`` overrides."""
    parser.add_argument(
        "--preset",
        choices=preset_names(),
        default=None,
        help=f"shipped configuration preset (default: {default_preset})",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with config sections")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. main.lr=1e-4 model.key_dim=32",
    )
    parser.set_defaults(_default_preset=default_preset)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """Add --no-progress: logs and batch jobs want no progress bars on stderr."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config described by --preset / --config / overrides."""
    return load_config(args.preset, args.config, args.overrides, default_preset=args._default_preset)
