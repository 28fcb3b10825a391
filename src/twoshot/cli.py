"""The ``twoshot`` command line: a thin layer over the package's functions.

Each subcommand lives in ``twoshot.commands.<name>`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Errors the user can fix
(:class:`~twoshot.errors.UserError`) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from twoshot._version import __version__
from twoshot.errors import UserError

# Order shown in --help; each name is a module in twoshot.commands.
COMMANDS: tuple[str, ...] = (
    "demo",
    "pipeline",
    "synth",
    "budget",
    "train",
    "pseudo-label",
    "infer",
    "export",
    "eval",
    "annotate",
    "info",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="twoshot",
        description="Two-shot video object segmentation: train STCN or Cutie from two labeled frames "
        "per video, make dense pseudo labels, segment videos, and score them.",
    )
    parser.add_argument("--version", action="version", version=f"twoshot {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"twoshot.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twoshot`` console script. Returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from twoshot.allocator import keep_freed_memory

    keep_freed_memory()  # every command that runs a network allocates large tensors per frame
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"twoshot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twoshot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
