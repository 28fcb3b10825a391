"""Pseudo-labelling one video from two labeled frames: shared-key engine vs the reference's way.

The two-shot reference labels a video with four separate STCN runs (forward and backward
from each labeled frame), each over the rest of the video and each re-encoding every frame
it passes. The engine computes every frame's key features once for all four directions and
stops each direction at the last frame it is responsible for. Both are timed in the same
process on the same generated 480p video with the same random-weight model, and the merged
masks are asserted identical.

The reference is run with the engine's forward direction on the sub-videos (``frames[s:]`` and
``frames[s::-1]``) with one frame per key-encoder call: that is STCN's ``InferenceCore``
loop, as ``tests/test_inference.py`` checks mask for mask.

    python benchmarks/pseudo_label_speed.py                         # tiny, 40 frames, ~1 min
    python benchmarks/pseudo_label_speed.py --preset stcn --frames 12 --device cuda

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch

from common import interleave, machine_info
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine, assign_sources
from twoshot.model import build_model


def reference_four_runs(
    model: torch.nn.Module, config: InferenceConfig, frames: np.ndarray, labeled: dict[int, np.ndarray]
) -> tuple[np.ndarray, int]:
    """The reference's way: a full forward and a full backward run from each labeled frame,
    each with a fresh engine (nothing shared, one frame per key-encoder call), then the
    nearest-labeled-frame merge. Returns (masks uint8 [T, H, W], frames key-encoded)."""
    single = InferenceConfig(**{**config.__dict__, "key_batch": 1})
    num = len(frames)
    forward, backward, encoded = {}, {}, 0
    for s, mask in labeled.items():
        run = PropagationEngine(model, single).propagate(frames[s:], {0: mask})
        forward[s], encoded = run.masks, encoded + run.stats.key_encodes
        run = PropagationEngine(model, single).propagate(frames[s::-1], {0: mask})
        backward[s], encoded = run.masks[::-1], encoded + run.stats.key_encodes
    masks = np.zeros((num, *frames.shape[1:3]), dtype=np.uint8)
    for t, s in enumerate(assign_sources(num, list(labeled))):
        if t == s:
            masks[t] = labeled[s]
        elif t > s:
            masks[t] = forward[s][t - s]
        else:
            masks[t] = backward[s][t]
    return masks, encoded


def run(
    preset: str = "tiny",
    num_frames: int = 40,
    labeled: Sequence[int] | None = None,
    size: tuple[int, int] = (480, 854),
    device: str = "cpu",
    amp: bool = False,
    key_batch: int | None = None,
    seed: int = 0,
    rounds: int = 1,
) -> dict:
    """Time both ways on one generated video and check they give the same masks.

    labeled: the two (or more) labeled frames (default: at 1/4 and 3/4 of the video, as a
    random two-frame budget places them on average); rounds: timed runs of each way, taking
    turns (A B, B A, ...). Returns median timings, the speed-up (median of the per-round
    ratios) and the work counts; raises AssertionError if the masks differ.
    """
    labeled = list(labeled) if labeled is not None else [num_frames // 4, (3 * num_frames) // 4]
    frames, labels = random_video(num_frames, size, object_ids=(1, 2), seed=seed)
    given = {s: labels[s] for s in labeled}
    torch.manual_seed(seed)
    model = build_model(load_config(preset).model).eval()
    config = InferenceConfig(size=480, device=device, amp=amp, key_batch=key_batch)
    engine = PropagationEngine(model, config)
    engine.propagate(frames[:2], {0: labels[0]})  # warm-up
    timing = interleave(
        {
            "shared": lambda: engine.propagate(frames, given, direction="bidirectional"),
            "reference": lambda: reference_four_runs(model, config, frames, given),
        },
        rounds,
        engine.device,
    )
    shared, (reference, ref_encoded) = timing.values["shared"], timing.values["reference"]
    shared_s, ref_s = timing.median("shared"), timing.median("reference")
    differing = int((shared.masks != reference).sum())
    assert differing == 0, f"{differing} pixels differ between the engine and the reference"
    return {
        "machine": machine_info(device),
        "settings": {
            "preset": preset,
            "frames": num_frames,
            "labeled": labeled,
            "size": list(size),
            "processing": "shorter side 480",
            "mem_every": 5,
            "top_k": 20,
            "key_batch": key_batch,
            "amp": amp,
            "rounds": rounds,
        },
        "shared_seconds": round(shared_s, 3),
        "reference_seconds": round(ref_s, 3),
        "speedup": round(timing.ratio("reference", "shared"), 2),
        "speedup_per_round": [
            round(r / s, 2) for r, s in zip(timing.seconds["reference"], timing.seconds["shared"])
        ],
        "shared_key_encodes": shared.stats.key_encodes,
        "reference_key_encodes": ref_encoded,
        "identical_masks": True,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the figures and the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--labeled", type=int, nargs="+", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument(
        "--key-batch",
        type=int,
        default=None,
        help="the engine's frames per key-encoder call (default: 1 on CPU, 8 on CUDA)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="timed runs of each way, interleaved")
    args = parser.parse_args(argv)
    report = run(
        args.preset,
        args.frames,
        args.labeled,
        device=args.device,
        amp=args.amp,
        key_batch=args.key_batch,
        rounds=args.rounds,
    )
    print(
        f"shared-key engine: {report['shared_seconds']} s ({report['shared_key_encodes']} key "
        f"encodings); four independent runs: {report['reference_seconds']} s "
        f"({report['reference_key_encodes']} key encodings); speed-up x{report['speedup']}; "
        "masks identical"
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
