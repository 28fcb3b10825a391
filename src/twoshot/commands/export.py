"""``twoshot export``: write a model's per-frame networks for another runtime."""

from __future__ import annotations

import argparse

from twoshot.config import preset_names
from twoshot.model.registry import model_kinds

HELP = "export a model's per-frame networks (ONNX; STCN, Cutie and SAM 2)"
FORMATS: tuple[str, ...] = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --model, --preset, --format, --out, --exact, --size, --objects."""
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="STCN, Cutie or SAM 2 weights to export"
    )
    parser.add_argument("--model", choices=model_kinds(), default=None, help="architecture of the weights")
    parser.add_argument(
        "--preset", choices=preset_names(), default=None, help="model sizes (default: guessed)"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")
    parser.add_argument(
        "--exact",
        action="store_true",
        help="STCN: export the network as it is, not the fast inference copy (BatchNorm folded)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="Cutie (required): the padded frame size the networks are exported for (multiples "
        "of 16); SAM 2: its square input, taken from the model when left out",
    )
    parser.add_argument(
        "--objects",
        type=int,
        default=2,
        help="Cutie: objects per memory bucket the networks take (default 2)",
    )


def run(args: argparse.Namespace) -> int:
    """Export the networks; print the files written."""
    from twoshot.inference.onnx_runtime import export_onnx
    from twoshot.inference.predictor import load_for_inference

    model, _ = load_for_inference(args.checkpoint, args.preset, args.model)
    size = tuple(args.size) if args.size else None
    for path in export_onnx(model, args.out, exact=args.exact, size=size, objects=args.objects):
        print(path)
    return 0
