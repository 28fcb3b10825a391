"""Inference speed and peak memory of the propagation engine at 480p.

Generates a 480x854 video with moving objects, builds a randomly initialised model of each
preset (``tiny`` and the full ``stcn``), and propagates the first frame's masks forward with
STCN's settings (memory every 5 frames, top-k 20, shorter side 480), timing the whole call
(frame preparation, key/value encoding, memory reads, decoding, upsampling, argmax).
Reports frames/s and peak memory: the process's peak resident set (``resource``, a
high-water mark over the whole run, so presets run smallest first), the peak of
Python/NumPy allocations (``tracemalloc``) and, on CUDA, ``torch.cuda.max_memory_allocated``.

    python benchmarks/inference_speed.py                       # tiny 24 frames, stcn 4 frames (CPU)
    python benchmarks/inference_speed.py --frames tiny=60 stcn=30 --device cuda --amp

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Mapping, Sequence

import torch

from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine
from twoshot.model import build_model

DEFAULT_FRAMES = {"tiny": 24, "stcn": 4}


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(presets: Sequence[str] = ("tiny", "stcn"), frames: Mapping[str, int] | None = None,
        size: tuple[int, int] = (480, 854), objects: int = 2, device: str = "cpu",
        amp: bool = False, key_batch: int = 8, repeats: int = 1, seed: int = 0) -> dict:
    """Time forward propagation for each preset.

    presets: model presets, run in this order; frames: preset -> video length (defaults
    DEFAULT_FRAMES); size: (H, W) of the generated video; objects: objects in it;
    device / amp / key_batch: engine settings; repeats: timed runs after one warm-up run
    (the best is kept). Returns {"machine": ..., "settings": ..., "results": {preset: {...}}}
    with frames_per_second, seconds, peak memory figures and the engine's work counts.
    """
    frames = {**DEFAULT_FRAMES, **(frames or {})}
    longest = max(frames[p] for p in presets)
    video, labels = random_video(longest, size, object_ids=tuple(range(1, objects + 1)), seed=seed)
    results = {}
    for preset in presets:
        torch.manual_seed(seed)
        model = build_model(load_config(preset).model).eval()
        config = InferenceConfig(size=480, device=device, amp=amp, key_batch=key_batch)
        engine = PropagationEngine(model, config)
        clip = video[:frames[preset]]
        engine.propagate(clip[:2], {0: labels[0]})             # warm-up: allocator, kernels
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tracemalloc.start()
        best = None
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            result = engine.propagate(clip, {0: labels[0]})
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = result.stats
        results[preset] = {
            "frames": len(clip), "seconds": round(best, 3),
            "frames_per_second": round(len(clip) / best, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "peak_python_numpy_mb": round(traced_peak / 2**20, 1),
            "peak_cuda_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                             if engine.device.type == "cuda" else None),
            "key_encodes": stats.key_encodes, "value_encodes": stats.value_encodes,
            "peak_cached_frames": stats.peak_cached_frames,
            "peak_memory_frames": stats.peak_memory_frames,
        }
        del model, engine
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": (torch.cuda.get_device_name(0) if device.startswith("cuda")
                               else "cpu")},
        "settings": {"size": list(size), "processing": "shorter side 480", "objects": objects,
                     "mem_every": 5, "top_k": 20, "amp": amp, "key_batch": key_batch,
                     "repeats": repeats},
        "results": results,
    }


def _frames_arg(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, count = item.partition("=")
        out[name] = int(count)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print a Markdown table and the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "stcn"])
    parser.add_argument("--frames", nargs="+", default=[], metavar="PRESET=N")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--key-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args.presets, _frames_arg(args.frames), device=args.device, amp=args.amp,
                 key_batch=args.key_batch, repeats=args.repeats)
    print("| preset | frames | seconds | frames/s | peak RSS MiB | peak NumPy MiB | peak CUDA MiB |")
    print("|---|---|---|---|---|---|---|")
    for preset, r in report["results"].items():
        print(f"| {preset} | {r['frames']} | {r['seconds']} | {r['frames_per_second']} | "
              f"{r['peak_rss_mb']} | {r['peak_python_numpy_mb']} | {r['peak_cuda_mb'] or '-'} |")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
