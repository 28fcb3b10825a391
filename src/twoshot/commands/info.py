"""``twoshot info``: versions, devices and presets, for bug reports."""

from __future__ import annotations

import argparse
import platform

from twoshot._version import __version__
from twoshot.config import preset_names

HELP = "print versions, available devices and presets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    """Print the environment summary. Returns 0."""
    import torch  # not at import: the CLI builds every command's parser for `twoshot --help`

    print(f"twoshot {__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"cuda available: {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
    print(f"cpu threads: {torch.get_num_threads()}")
    print(f"presets: {', '.join(preset_names())}")
    return 0
