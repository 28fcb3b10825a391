"""Pseudo-label bank time per frame: nearest merge, fused merge, fused + flip (one video).

Random-weight model, one generated video, labeled frames at 1/4 and 3/4 of it; each variant
runs ``engine.propagate(direction="bidirectional")`` with the settings of its row, the variants
taking turns (A B C, C B A, ...) so that they share the machine's load.

    python benchmarks/merge_speed.py                  # tiny, 40 frames at 480p, ~2 min on 2 cores

Prints the seconds per frame of each variant, its key encodings and frames segmented, and the
JSON result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

import torch

from common import interleave, machine_info
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine
from twoshot.model import build_model

VARIANTS: dict[str, dict[str, object]] = {
    "nearest": {},
    "fused": {"merge": "fused"},
    "fused + flip": {"merge": "fused", "flip": True},
}


def run(preset: str = "tiny", num_frames: int = 40, size: int = 480, rounds: int = 2, seed: int = 0) -> dict:
    """Median seconds per frame of each variant over ``rounds`` interleaved rounds."""
    frames, labels = random_video(num_frames, (size, size * 16 // 9), object_ids=(1, 2), seed=seed)
    labeled = [num_frames // 4, (3 * num_frames) // 4]
    given = {s: labels[s] for s in labeled}
    torch.manual_seed(seed)
    model = build_model(load_config(preset).model).eval()
    base = InferenceConfig(size=size, device="cpu")
    engines = {
        name: PropagationEngine(model, dataclasses.replace(base, **changes))  # type: ignore[arg-type]
        for name, changes in VARIANTS.items()
    }
    engines["nearest"].propagate(frames[:2], {0: labels[0]})  # warm-up
    timing = interleave(
        {
            name: (lambda e=engine: e.propagate(frames, given, direction="bidirectional"))
            for name, engine in engines.items()
        },
        rounds,
    )
    result = {
        "machine": machine_info("cpu"),
        "preset": preset,
        "frames": num_frames,
        "size": size,
        "rows": {},
    }
    for name in VARIANTS:
        stats = timing.values[name].stats
        result["rows"][name] = {
            "seconds_per_frame": round(timing.median(name) / num_frames, 4),
            "rounds_seconds": [round(s, 2) for s in timing.seconds[name]],
            "key_encodes": stats.key_encodes,
            "segmented": stats.segmented,
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print a table and the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=480, help="frame height (width 16:9) and processing size")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    result = run(args.preset, args.frames, args.size, args.rounds)
    print("| variant | s / frame | key encodings | frames segmented |\n|---|---:|---:|---:|")
    for name, row in result["rows"].items():
        print(f"| {name} | {row['seconds_per_frame']:.3f} | {row['key_encodes']} | {row['segmented']} |")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
