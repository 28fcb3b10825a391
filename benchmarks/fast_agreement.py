"""Per-frame agreement of the engine's faster paths with its exact path, through the memory.

For each preset, a seeded random network whose final convolution is calibrated so that its
logits on the first segmented frame have a chosen standard deviation (mixed probabilities:
neither near-certain masks, which no rounding moves, nor the near-ties of an uncalibrated
random network, unless asked for) propagates a generated video (objects 1 and 2 annotated
on frame 0, object 3 entering and annotated on frame ``--enter``) with the exact path
(``inference.exact``) and with each variant:

- ``fast``: the preset's default path (``stcn``: folded BatchNorm, shared per-frame halves,
  channels-last; ``tiny``: the exact path, its ``inference.exact``; Cutie: the exact path,
  see ``VOSModel.channels_last_when_fast``);
- ``fast_path``: the default path with ``inference.exact`` off (``tiny``'s old default);
- ``channels_last``: the default path with channels-last forced on (Cutie's old default);
- ``bf16``: the default path under bfloat16 autocast (``inference.amp`` with ``amp_dtype:
  bfloat16``; native on CPUs with AVX-512 BF16 or AMX);
- STCN only, one ingredient of its fast path at a time on the exact network: ``fold_only``
  (BatchNorm folded into the encoders), ``shared_only`` (the decoder's and value fuser's
  shared halves), ``channels_last_only``;
- ``fp32``: the fast path in float32 (``exact`` and ``amp`` off: SAM 2's presets set both);
  ``onnxruntime`` / ``openvino``: the same with the networks run by that runtime.

``--baseline VARIANT`` compares against that variant instead of the exact path (the runtimes
against ``fp32``, the torch path they replace).

``--checkpoint CKPT --data ROOT`` measures trained weights instead: ``CKPT`` (of the one
preset in ``--presets``) propagates the first ``--videos`` videos of the DAVIS-layout
``ROOT`` (``--split``, default ``val``) from their given masks, e.g. the weights and
validation videos of ``twoshot demo``. Random weights put many pixels near a tie between
objects, which any change of rounding flips; trained ones mostly give confident masks.

It prints, per preset and variant, the share of equal label pixels on every frame, the worst
frame, the largest probability difference and the seconds of each run, with the CPU's flags.
``tests/test_fast_inference.py`` uses :func:`calibrated_model` and :func:`entering_video`.

    python benchmarks/fast_agreement.py                                  # all presets, 240x320
    python benchmarks/fast_agreement.py --presets cutie-small --logit-std 0   # uncalibrated
    python benchmarks/fast_agreement.py --presets tiny --checkpoint DEMO/run/phase2/final.pth \
        --data DEMO/data --variants fast_path bf16 onnxruntime openvino

``run(...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twoshot.config import InferenceConfig, load_config, preset_names
from twoshot.data.fixtures import random_video
from twoshot.data.readers import load_frames, open_dataset, reference_annotations
from twoshot.inference import PropagationEngine
from twoshot.model import build_model, load_model
from twoshot.model.checkpoint import saved_config
from twoshot.model.interface import VOSModel

VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {},
    "fast_path": {"exact": False},
    "channels_last": {"channels_last": True, "exact": False},
    "bf16": {"amp": True, "amp_dtype": "bfloat16", "exact": False},
    "fold_only": {"channels_last": False, "exact": False},
    "shared_only": {"channels_last": False, "exact": False},
    "channels_last_only": {"channels_last": True, "exact": False},
    "fp32": {"exact": False, "amp": False},
    "onnxruntime": {"runtime": "onnxruntime", "exact": False, "amp": False},
    "openvino": {"runtime": "openvino", "exact": False, "amp": False},
}
INGREDIENTS = ("fold_only", "shared_only", "channels_last_only")


def ingredient_engine(model: VOSModel, config: InferenceConfig, ingredient: str) -> PropagationEngine:
    """An engine running STCN's exact network with one ingredient of its fast copy only."""
    from twoshot.model.fast_inference import SharedInputResBlock, fold_batch_norms, with_modules
    from twoshot.model.stcn.network import STCN
    from twoshot.model.stcn.propagator import STCNPropagator

    engine = PropagationEngine(model, config)  # its layout: channels-last for channels_last_only
    network = engine.model
    assert isinstance(network, STCN)
    if ingredient == "fold_only":
        network = with_modules(
            network,
            key_encoder=fold_batch_norms(network.key_encoder),
            value_encoder=fold_batch_norms(network.value_encoder),
        )
    elif ingredient == "shared_only":
        value_encoder = copy.deepcopy(network.value_encoder)  # its fuser block is replaced below
        block = value_encoder.fuser.block1
        value_channels = block.conv1.in_channels - network.key_encoder.channels[2]
        value_encoder.fuser.block1 = SharedInputResBlock(block, value_channels)
        compress = SharedInputResBlock(network.decoder.compress, network.config.value_dim)
        network = with_modules(
            network, value_encoder=value_encoder, decoder=with_modules(network.decoder, compress=compress)
        )
    engine.propagator = STCNPropagator(network.eval(), config)
    return engine


def seeded_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter and BatchNorm statistic from a generator (independent of the
    modules' initialisation code): weights normal / sqrt(fan-in), BatchNorm scales near 1,
    variances in [1, 1.5], other vectors 0.1 * normal; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("inv_freq"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(1 + 0.5 * torch.rand(tensor.shape, generator=generator))
            elif tensor.dim() > 1:
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            elif (".bn" in name or "norm" in name) and name.endswith("weight"):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return model.eval()


def final_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    """The convolution giving each object's logit (STCN's decoder.pred, Cutie's mask_decoder.pred)."""
    decoder = model.mask_decoder if hasattr(model, "mask_decoder") else model.decoder
    assert isinstance(decoder.pred, torch.nn.Conv2d)
    return decoder.pred


def entering_video(
    size: tuple[int, int], frames: int, enter: int, seed: int = 0
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(frames uint8 [T, H, W, 3], annotations {frame: uint8 [H, W]}): objects 1 and 2
    annotated on frame 0, object 3 entering and annotated alone on frame ``enter``."""
    video, labels = random_video(frames, size, object_ids=(1, 2, 3), first_frames={3: enter}, seed=seed)
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)
    later = np.where(labels[enter] == 3, 3, 0).astype(np.uint8)
    return video, {0: first, enter: later}


def logit_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """(the module whose output, or first output, is the objects' logits; the layers whose
    weights and biases scale them): STCN's and Cutie's final convolution; SAM 2's mask
    decoder and the last layers of its hypernetwork MLPs (a mask's logits are their outputs'
    dot products with the upscaled map, so scaling all of them scales every mask)."""
    decoder = getattr(model, "sam_mask_decoder", None)
    if decoder is not None:
        return decoder, [mlp.layers[-1] for mlp in decoder.output_hypernetworks_mlps]
    conv = final_conv(model)
    return conv, [conv]


SAM2_OBJECT_SCORE_BIAS = 4.0  # SAM 2: the object-score head sees every object


def calibrated_model(
    preset: str, config: InferenceConfig, video: np.ndarray, first: np.ndarray, logit_std: float, seed: int
) -> VOSModel:
    """``preset``'s network with :func:`seeded_weights`, its logit layers (:func:`logit_layers`,
    weights and biases) scaled so that the logits it gives on frame 1, segmented by the exact
    path from ``first`` (frame 0's masks), have standard deviation ``logit_std`` (0: left
    unscaled). SAM 2 keeps its own initialisation, seeded (with :func:`seeded_weights`
    every object got nearly the same logits and object 1 won every pixel from frame 1 on),
    its object-score head's last bias set to :data:`SAM2_OBJECT_SCORE_BIAS` so that the
    objects are seen."""
    sam2 = load_config(preset).model.kind == "sam2"
    if sam2:
        torch.manual_seed(seed)
    model = build_model(load_config(preset).model)
    decoder = getattr(model, "sam_mask_decoder", None)
    if not sam2:
        seeded_weights(model, seed)
    else:
        model.eval()
        with torch.no_grad():
            decoder.pred_obj_score_head.layers[-1].bias.fill_(SAM2_OBJECT_SCORE_BIAS)
    if logit_std <= 0:
        return model
    hooked, layers = logit_layers(model)
    spread: list[float] = []

    def record(module: torch.nn.Module, inputs: Any, out: Any) -> None:
        spread.append(float((out[0] if isinstance(out, tuple) else out).std()))

    hook = hooked.register_forward_hook(record)
    PropagationEngine(model, dataclasses.replace(config, exact=True)).propagate(video[:2], {0: first})
    hook.remove()
    # SAM 2's decoder also runs for the given masks of frame 0: frame 1's call is the last.
    scale = logit_std / spread[-1 if decoder is not None else 0]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    return model


Clip = tuple[np.ndarray, dict[int, np.ndarray]]


def dataset_clips(root: Path, split: str, count: int) -> list[Clip]:
    """The first ``count`` videos of the DAVIS-layout ``root`` (``split``) as (frames uint8
    [T, H, W, 3], each object's mask on the frame where it first appears)."""
    clips = []
    for seq in open_dataset("davis", root, split)[:count]:
        given, _, _ = reference_annotations(seq)
        clips.append((load_frames(seq), given))
    return clips


def _propagate(clips: Sequence[Clip], engine: PropagationEngine) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(every frame's labels [H, W], every frame's probabilities [objects + 1, H, W]) of
    ``engine`` over all ``clips`` in order."""
    labels: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    for video, masks in clips:
        out = engine.propagate(video, masks, probabilities=True)
        assert out.probabilities is not None
        labels.extend(out.masks)
        probabilities.extend(out.probabilities)
    return labels, probabilities


def run(
    presets: Sequence[str] | None = None,
    size: tuple[int, int] = (240, 320),
    frames: int = 10,
    enter: int = 3,
    logit_std: float = 1.0,
    variants: Sequence[str] = ("fast", "channels_last", "bf16"),
    seed: int = 0,
    baseline: str = "exact",
    checkpoint: Path | None = None,
    data: Path | None = None,
    split: str = "val",
    videos: int = 4,
) -> dict[str, Any]:
    """The figures: {"machine": ..., "settings": ..., "results": {preset: {variant: {...}}}}
    with per-frame agreement with the ``baseline`` (the exact path, or a variant's name), its
    minimum and mean, the largest probability difference, the share of uncertain pixels (top
    probability below 0.9) on the baseline, and seconds. With ``checkpoint`` and ``data``:
    those weights (of the one preset in ``presets``) on the first ``videos`` videos of the
    DAVIS-layout ``data`` (``split``), every video's frames in ``per_frame`` one after another."""
    from common import machine_info  # here: tests import this script without benchmarks/ on the path

    clips = [entering_video(size, frames, enter, seed)]
    names = list(preset_names() if presets is None else presets)
    if checkpoint is not None:
        if data is None or len(names) != 1:
            raise SystemExit("--checkpoint needs --data and exactly one preset in --presets")
        clips = dataset_clips(data, split, videos)
    results: dict[str, Any] = {}
    for preset in names:
        config = dataclasses.replace(load_config(preset).inference, size=-1, device="cpu")
        torch.manual_seed(seed)
        if checkpoint is not None:
            saved = saved_config(checkpoint)  # a training run's own settings (e.g. an input size)
            model = load_model(checkpoint, (saved or load_config(preset)).model).eval()
        else:
            model = calibrated_model(preset, config, clips[0][0], clips[0][1][0], logit_std, seed)
        base = VARIANTS[baseline] if baseline != "exact" else {"exact": True}
        start = time.perf_counter()
        exact = _propagate(clips, PropagationEngine(model, dataclasses.replace(config, **base)))
        exact_s = time.perf_counter() - start
        uncertain = [float((p.max(axis=0) < 0.9).mean()) for p in exact[1]]
        row: dict[str, Any] = {
            "exact_seconds": round(exact_s, 2),
            "uncertain_share": [round(u, 3) for u in uncertain],
        }
        for name in variants:
            if name in INGREDIENTS and model.kind != "stcn":
                continue
            start = time.perf_counter()
            variant = dataclasses.replace(config, **VARIANTS[name])
            if name in INGREDIENTS:
                engine = ingredient_engine(model, variant, name)
            else:
                engine = PropagationEngine(model, variant)
            labels, probabilities = _propagate(clips, engine)
            seconds = time.perf_counter() - start
            agreement = np.array([float((a == b).mean()) for a, b in zip(labels, exact[0], strict=True)])
            row[name] = {
                "per_frame": [round(float(a), 5) for a in agreement],
                "worst": round(float(agreement.min()), 5),
                "mean": round(float(agreement.mean()), 5),
                "max_prob_diff": max(
                    float(np.abs(p - q).max()) for p, q in zip(probabilities, exact[1], strict=True)
                ),
                "seconds": round(seconds, 2),
            }
        results[preset] = row
    return {
        "machine": machine_info("cpu"),
        "settings": {
            "size": list(size),
            "frames": frames,
            "enter": enter,
            "logit_std": logit_std,
            "seed": seed,
            "baseline": baseline,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "data": None if data is None else f"{data} ({split}, {len(clips)} videos)",
        },
        "results": results,
    }


def _frames_cell(per_frame: list[float]) -> str:
    """Every frame's agreement in %, or for many frames how many are below 99.9%."""
    if len(per_frame) <= 30:
        return " ".join(f"{100 * a:.2f}" for a in per_frame)
    return f"{sum(a < 0.999 for a in per_frame)} of {len(per_frame)} frames below 99.9%"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print a Markdown table and the JSON result."""
    from common import machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(preset_names()), choices=preset_names())
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--enter", type=int, default=3, help="frame where object 3 appears")
    parser.add_argument(
        "--logit-std", type=float, default=1.0, help="calibration of the final logits; 0 leaves them"
    )
    parser.add_argument(
        "--variants", nargs="+", default=["fast", "channels_last", "bf16"], choices=list(VARIANTS)
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline",
        default="exact",
        choices=["exact", *VARIANTS],
        help="what the variants are compared with",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained weights of the one preset")
    parser.add_argument("--data", type=Path, default=None, help="with --checkpoint: a DAVIS-layout root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--videos", type=int, default=4, help="with --checkpoint: how many videos")
    args = parser.parse_args(argv)
    report = run(
        args.presets,
        tuple(args.size),
        args.frames,
        args.enter,
        args.logit_std,
        args.variants,
        args.seed,
        args.baseline,
        args.checkpoint,
        args.data,
        args.split,
        args.videos,
    )
    print(machine_line(report["machine"]))
    print(f"baseline: {args.baseline}")
    print("| preset | variant | worst frame | mean | per frame | max prob diff | s (baseline s) |")
    print("|---|---|---|---|---|---|---|")
    for preset, row in report["results"].items():
        for name in args.variants:
            if name not in row:
                continue
            r = row[name]
            print(
                f"| {preset} | {name} | {100 * r['worst']:.3f}% | {100 * r['mean']:.3f}% | "
                f"{_frames_cell(r['per_frame'])} | {r['max_prob_diff']:.1e} | "
                f"{r['seconds']} ({row['exact_seconds']}) |"
            )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
