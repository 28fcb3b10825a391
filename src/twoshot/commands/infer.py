"""``twoshot infer``: segment every video of a dataset from its given masks."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from twoshot.commands.common import add_progress_argument
from twoshot.config import InferenceConfig, preset_names
from twoshot.config_checks import RUNTIMES, check_inference_settings
from twoshot.model.registry import model_kinds

if TYPE_CHECKING:  # the model module imports torch: not at the CLI's start
    from twoshot.model.interface import VOSModel

HELP = "segment videos (DAVIS, YouTube-VOS, generic folders, a video file) from their first masks"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --model, --preset and the inference settings shared with ``pseudo-label``."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="STCN or Cutie weights (raw state dict or training checkpoint)",
    )
    parser.add_argument(
        "--model",
        choices=model_kinds(),
        default=None,
        help="the architecture of the weights (default: told from their names)",
    )
    parser.add_argument(
        "--preset",
        choices=preset_names(),
        default=None,
        help="model sizes and inference defaults (default: the config.json that "
        "'twoshot train' wrote beside the weights, else guessed from them)",
    )
    parser.add_argument(
        "--mem-every",
        type=int,
        default=None,
        metavar="N",
        help="add a memory frame every N frames (default 5)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="memory entries read per query pixel (default: the preset's, 20 for stcn, 30 for cutie)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PX",
        help="process at this shorter side; -1 keeps the native size (default: the preset's, 480 for stcn)",
    )
    parser.add_argument(
        "--include-last", action="store_true", help="keep the previous frame as temporary memory"
    )
    parser.add_argument(
        "--max-memory-frames",
        type=int,
        default=None,
        metavar="N",
        help="bound memory for long videos (labeled frames are always kept)",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="SAM 2: keep frame features and memories in CPU memory (long videos on a small GPU)",
    )
    parser.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bit-identical to the reference implementation (slower: no channels-last "
        "convolutions, no folded BatchNorm; the default agrees on all but a few pixels in a "
        "million); --no-exact: the fast path where the preset sets exact (tiny, SAM 2)",
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="half-precision autocast (CUDA; on a CPU with --amp-dtype bfloat16 only); "
        "--no-amp: float32 where the preset sets amp (SAM 2)",
    )
    parser.add_argument(
        "--amp-dtype",
        choices=("float16", "bfloat16"),
        default=None,
        help="the type --amp computes in (default float16)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="what runs the networks: torch (default), onnxruntime or openvino (STCN, Cutie, "
        "SAM 2 with --no-exact --no-amp; CPU, need pip install 'twoshot[onnx]' or "
        "'twoshot[openvino]'; docs/inference.md)",
    )
    parser.add_argument(
        "--onnx-cache",
        default=None,
        metavar="DIR|none",
        help="with --runtime: the folder keeping exported ONNX graphs for later runs (default "
        "$TWOSHOT_CACHE/onnx or ~/.cache/twoshot/onnx); none: export in every process",
    )
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="DIR",
        help="with --runtime: run the graphs twoshot export --format onnx wrote to DIR (from the "
        "same weights, for the video's input shapes) instead of exporting",
    )
    parser.add_argument(
        "--merge",
        default=None,
        metavar="nearest|fused",
        help="with labeled frames both ways: each frame from its nearest labeled frame (nearest, "
        "the paper's rule) or, between two labeled frames, both sides weighted by distance (fused)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="test-time augmentation: average with the mirrored video"
    )
    parser.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help="test-time augmentation: average over --size times each factor (default: 1.0)",
    )
    add_progress_argument(parser)


def load_model_and_config(args: argparse.Namespace) -> tuple[VOSModel, InferenceConfig]:
    """(model, InferenceConfig) from --checkpoint / --preset and the setting flags."""
    from twoshot.inference.predictor import load_for_inference

    # Refuse bad augmentation or merge flags before the weights are read.
    given = {k: v for k in ("merge", "scales") if (v := getattr(args, k, None)) is not None}
    check_inference_settings(dataclasses.replace(InferenceConfig(), **given))
    model, config = load_for_inference(args.checkpoint, args.preset, args.model)
    changes = {
        "mem_every": args.mem_every,
        "top_k": args.top_k,
        "size": args.size,
        "max_memory_frames": args.max_memory_frames,
        "amp_dtype": args.amp_dtype,
        "runtime": getattr(args, "runtime", None),
        "onnx_cache": getattr(args, "onnx_cache", None),
        "onnx_graphs": getattr(args, "onnx", None),
        "merge": getattr(args, "merge", None),
        "scales": getattr(args, "scales", None),
    }
    config = dataclasses.replace(
        config,
        **{k: v for k, v in changes.items() if v is not None},
        device=args.device,
        amp=config.amp if args.amp is None else args.amp,
        include_last=args.include_last or config.include_last,
        flip=getattr(args, "flip", False) or config.flip,
        exact=config.exact if getattr(args, "exact", None) is None else args.exact,
        offload=getattr(args, "offload", False) or config.offload,
    )
    check_inference_settings(config, model.kind)
    return model, config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``twoshot infer``."""
    parser.add_argument(
        "--dataset",
        choices=("davis", "youtube", "generic", "video"),
        default=None,
        help="layout of --data (default: detected)",
    )
    parser.add_argument(
        "--data", required=True, metavar="PATH", help="dataset root, or a video file (with --masks)"
    )
    parser.add_argument(
        "--split", default=None, help="DAVIS: val (default) / train / ...; YouTube-VOS: valid (default) ..."
    )
    parser.add_argument(
        "--masks",
        default=None,
        metavar="DIR",
        help="video file only: folder of <frame_index>.png masks (default: <video stem>_masks next to it)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_arguments(parser)
    parser.add_argument(
        "--backward",
        action="store_true",
        help="also propagate backwards: every frame takes the propagation from its "
        "nearest annotated frame (each annotated frame must show all objects)",
    )
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="also write overlays of the masks on the frames (OUT/overlays/<video>/)",
    )
    parser.add_argument(
        "--all-frames",
        action="store_true",
        help="YouTube-VOS: write every frame, not only those meta.json lists",
    )


def run(args: argparse.Namespace) -> int:
    """Segment every video and write the masks. Returns 0."""
    from twoshot.data.folders import DATASET_LAYOUTS
    from twoshot.data.readers import detect_layout, open_dataset
    from twoshot.inference.engine import PropagationEngine
    from twoshot.inference.predict import predict_sequences

    # YouTube-VOS roots hold split folders: look for valid/meta.json when no split is given.
    layout = args.dataset or detect_layout(args.data, args.split or "valid")
    split = args.split if args.split is not None else DATASET_LAYOUTS[layout].default_split(args.data, False)
    masks = args.masks
    if layout == "video" and masks is None:
        masks = str(DATASET_LAYOUTS["video"].annotation_root(args.data, None))
    sequences = open_dataset(layout, args.data, split, masks=masks if layout == "video" else None)
    model, config = load_model_and_config(args)
    engine = PropagationEngine(model, config)
    print(
        f"twoshot infer: {len(sequences)} videos from {args.data} ({layout}"
        f"{', ' + split if split else ''}) on {engine.device}, shorter side "
        f"{'native' if config.size == -1 else config.size}"
    )
    summary = predict_sequences(
        engine,
        sequences,
        args.out,
        youtube=layout == "youtube",
        all_frames=args.all_frames,
        backward=args.backward,
        overlay=args.overlay,
        progress=not args.no_progress,
    )
    print(
        f"done: {summary.videos} videos, {summary.frames} frames, {summary.objects} objects in "
        f"{summary.seconds:.1f} s ({summary.frames_per_second:.1f} frames/s) -> {args.out}"
    )
    return 0
