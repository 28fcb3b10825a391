"""Inference speed and peak memory of the propagation engine at 480p.

Generates a 480x854 video with moving objects, builds a randomly initialised model of each
preset (``tiny`` and the full ``stcn`` by default; ``cutie-small``, ``cutie-base``,
``cutie-tiny`` too), and propagates the first frame's masks forward with the preset's memory
settings (memory every 5 frames, top-k 20 for STCN and 30 for Cutie) at shorter side 480,
timing the whole call (frame preparation, encoding, memory reads, decoding, upsampling,
argmax).
Reports frames/s and peak memory: the process's peak resident set (VmHWM, reset before
each preset where Linux allows it, else a high-water mark over the whole run, so presets run
smallest first), the peak of Python/NumPy allocations (``tracemalloc``) and, on CUDA,
``torch.cuda.max_memory_allocated``.

``--fast-path`` instead compares the engine's speed options on one preset, interleaved
round by round on the same clip: the default engine (the model's fast inference copy,
channels-last for STCN; the exact path for ``tiny``, whose preset sets it), ``exact`` (the
reference's layout and operations, bit for bit), ``fast`` (``inference.exact`` off),
channels-last forced on (Cutie's default keeps the reference's layout), the fast copy
without channels-last, key encoding in batches of 8 frames (``key_batch=8``: the CUDA
default; a CPU's is 1), ``compile`` (torch.compile; its compile time is reported
separately), one intra-op thread, ``bf16`` (autocast to bfloat16, on a CPU too: native
with AVX-512 BF16 or AMX), ``onnxruntime`` and ``openvino`` (STCN's or Cutie's networks
exported to ONNX and run by that runtime, on a CPU with its extra) and on CUDA ``amp``
(float16). Every option but ``default`` and ``exact`` turns ``inference.exact`` off.
Each option's masks are compared with the default engine's (pixels that differ).

    python benchmarks/inference_speed.py                       # tiny 24 frames, stcn 4 frames (CPU)
    python benchmarks/inference_speed.py --frames tiny=60 stcn=30 --device cuda --amp
    python benchmarks/inference_speed.py --fast-path            # tiny, 16 frames, 3 rounds (CPU)
    python benchmarks/inference_speed.py --fast-path --presets stcn --frames stcn=30 --device cuda

``run(...) -> dict`` and ``fast_path(...) -> dict`` do the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import sys
import tracemalloc
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import torch

from common import interleave, machine_info, machine_line, peak_rss_mb, reset_peak_rss, rss_mb, timed
from twoshot.config import load_config
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine
from twoshot.model import build_model

DEFAULT_FRAMES = {"tiny": 24, "stcn": 4, "cutie-tiny": 24, "cutie-small": 4, "cutie-base": 4}


def run(
    presets: Sequence[str] = ("tiny", "stcn"),
    frames: Mapping[str, int] | None = None,
    size: tuple[int, int] = (480, 854),
    objects: int = 2,
    device: str = "cpu",
    amp: bool = False,
    key_batch: int | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> dict:
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
        preset_config = load_config(preset)
        model = build_model(preset_config.model).eval()
        # Each preset's own memory settings (top-k 20 for STCN, 30 for Cutie), at 480p.
        config = dataclasses.replace(
            preset_config.inference, size=480, device=device, amp=amp, key_batch=key_batch
        )
        engine = PropagationEngine(model, config)
        clip = video[: frames[preset]]
        engine.propagate(clip[:2], {0: labels[0]})  # warm-up: allocator, kernels
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset = reset_peak_rss()
        base_rss = rss_mb()
        tracemalloc.start()
        best = None
        for _ in range(max(1, repeats)):
            result, seconds = timed(partial(engine.propagate, clip, {0: labels[0]}), engine.device)
            best = seconds if best is None else min(best, seconds)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = result.stats
        results[preset] = {
            "frames": len(clip),
            "seconds": round(best, 3),
            "frames_per_second": round(len(clip) / best, 2),
            "top_k": config.top_k,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_is_per_preset": reset,
            "rss_before_mb": None if base_rss is None else round(base_rss, 1),
            "peak_python_numpy_mb": round(traced_peak / 2**20, 1),
            "peak_cuda_mb": (
                round(torch.cuda.max_memory_allocated() / 2**20, 1) if engine.device.type == "cuda" else None
            ),
            "key_encodes": stats.key_encodes,
            "value_encodes": stats.value_encodes,
            "peak_cached_frames": stats.peak_cached_frames,
            "peak_memory_frames": stats.peak_memory_frames,
        }
        del model, engine
    return {
        "machine": machine_info(device),
        "settings": {
            "size": list(size),
            "processing": "shorter side 480",
            "objects": objects,
            "mem_every": 5,
            "top_k": "the preset's",
            "amp": amp,
            "key_batch": key_batch,
            "repeats": repeats,
        },
        "results": results,
    }


FAST_PATH_OPTIONS: tuple[str, ...] = (
    "default",
    "exact",
    "fast",
    "channels_last",
    "no_channels_last",
    "key_batch_8",
    "compile",
    "one_thread",
    "bf16",
    "onnxruntime",
    "openvino",
    "amp",
)


def fast_path(
    preset: str = "tiny",
    num_frames: int = 16,
    size: tuple[int, int] = (480, 854),
    options: Sequence[str] = FAST_PATH_OPTIONS,
    rounds: int = 3,
    device: str = "cpu",
    objects: int = 2,
    seed: int = 0,
    processing: int = 480,
) -> dict:
    """Speed of each engine option against the default engine, interleaved on one clip.

    options: names from FAST_PATH_OPTIONS (``default`` is always included; ``amp`` only on
    CUDA, ``compile`` variants skipped when torch has no ``torch.compile``); rounds: timed
    runs per option after a full warm-up run (which compiles, for the compile options);
    processing: the shorter side frames are processed at (``inference.size``).
    Returns per option: median / best seconds, frames/s, speed-up over the default (median
    of per-round ratios), pixels whose mask differs from the default engine's, and for
    compile its warm-up (compile) seconds and whether it fell back to eager execution.
    """
    frames, labels = random_video(num_frames, size, object_ids=tuple(range(1, objects + 1)), seed=seed)
    torch.manual_seed(seed)
    preset_config = load_config(preset)
    base = build_model(preset_config.model).eval()
    preset_inference = preset_config.inference
    cuda = device.startswith("cuda")
    wanted = ["default"] + [o for o in options if o != "default"]
    if not cuda:
        wanted = [o for o in wanted if o != "amp"]
    if not hasattr(torch, "compile"):
        wanted = [o for o in wanted if "compile" not in o]
    for runtime in ("onnxruntime", "openvino"):  # STCN and Cutie on a CPU, with the extra installed
        if cuda or preset_config.model.kind == "sam2" or importlib.util.find_spec(runtime) is None:
            wanted = [o for o in wanted if o != runtime]
    if base.channels_last_when_fast:
        wanted = [o for o in wanted if o != "channels_last"]  # the default already is
    # The fast-path options turn inference.exact off: a preset may default to the exact path (tiny).
    settings = {
        "default": {},
        "exact": {"exact": True},
        "fast": {"exact": False},
        "channels_last": {"channels_last": True, "exact": False},
        "no_channels_last": {"channels_last": False, "exact": False},
        "key_batch_8": {"key_batch": 8},
        "compile": {"compile": True, "exact": False},
        "one_thread": {},
        "bf16": {"amp": True, "amp_dtype": "bfloat16", "exact": False},
        "onnxruntime": {"runtime": "onnxruntime", "exact": False},
        "openvino": {"runtime": "openvino", "exact": False},
        "amp": {"amp": True, "exact": False},
    }
    threads = torch.get_num_threads()
    engines: dict[str, PropagationEngine] = {}
    warmup: dict[str, float] = {}
    fell_back: dict[str, bool] = {}
    for name in wanted:
        # Each option gets its own copy of the weights: channels_last converts them in place.
        # The preset's memory settings (top-k 20 for STCN, 30 for Cutie).
        config = dataclasses.replace(preset_inference, size=processing, device=device, **settings[name])
        engines[name] = PropagationEngine(copy.deepcopy(base), config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = engines[name]
            _, warmup[name] = timed(
                lambda engine=engine, name=name: _run_option(engine, name, frames, labels, threads),  # type: ignore[misc]
                engine.device,
            )
        fell_back[name] = any("without torch.compile" in str(w.message) for w in caught)
    variants: dict[str, Callable[[], np.ndarray]] = {
        name: (lambda name=name: _run_option(engines[name], name, frames, labels, threads))  # type: ignore[misc]
        for name in wanted
    }
    timing = interleave(variants, rounds, device)
    reference = timing.values["default"]
    results = {}
    for name in wanted:
        median = timing.median(name)
        results[name] = {
            "settings": settings[name] if name != "one_thread" else {"torch_threads": 1},
            "median_seconds": round(median, 3),
            "best_seconds": round(timing.best(name), 3),
            "frames_per_second": round(num_frames / median, 2),
            "speedup": round(timing.ratio("default", name), 2),
            "pixels_differing": int((timing.values[name] != reference).sum()),
            "pixels": int(reference.size),
            "warmup_seconds": round(warmup[name], 1),
            "fell_back_to_eager": fell_back[name] if "compile" in name else None,
        }
    return {
        "machine": machine_info(device),
        "settings": {
            "preset": preset,
            "frames": num_frames,
            "size": list(size),
            "processing": f"shorter side {processing}",
            "objects": objects,
            "rounds": rounds,
            "mem_every": 5,
            "top_k": preset_inference.top_k,
        },
        "results": results,
    }


def _run_option(
    engine: PropagationEngine, name: str, frames: np.ndarray, labels: np.ndarray, threads: int
) -> np.ndarray:
    """One timed propagation of an option (``one_thread``: with one intra-op thread)."""
    if name == "one_thread":
        torch.set_num_threads(1)
    try:
        return engine.propagate(frames, {0: labels[0]}).masks
    finally:
        torch.set_num_threads(threads)


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
    parser.add_argument(
        "--key-batch",
        type=int,
        default=None,
        help="frames per key-encoder call (default: the engine's, 1 on CPU, 8 on CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--fast-path",
        action="store_true",
        help="compare the engine's speed options on the first preset instead",
    )
    parser.add_argument(
        "--options",
        nargs="+",
        default=list(FAST_PATH_OPTIONS),
        choices=FAST_PATH_OPTIONS,
        help="with --fast-path: the options to compare",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --fast-path: timed rounds")
    parser.add_argument(
        "--processing", type=int, default=480, help="with --fast-path: shorter side to process at"
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=[480, 854], metavar=("H", "W"), help="generated video size"
    )
    args = parser.parse_args(argv)
    if args.fast_path:
        preset = args.presets[0] if args.presets != ["tiny", "stcn"] else "tiny"
        frames = _frames_arg(args.frames).get(preset, 16)
        report = fast_path(
            preset,
            frames,
            tuple(args.size),
            options=args.options,
            rounds=args.rounds,
            device=args.device,
            processing=args.processing,
        )
        print(machine_line(report["machine"]))
        print("| option | median s | frames/s | speed-up vs default | pixels differing | warm-up s |")
        print("|---|---|---|---|---|---|")
        for name, r in report["results"].items():
            print(
                f"| {name} | {r['median_seconds']} | {r['frames_per_second']} | x{r['speedup']} | "
                f"{r['pixels_differing']} / {r['pixels']} | {r['warmup_seconds']} |"
            )
        print(json.dumps(report, indent=1))
        return 0
    report = run(
        args.presets,
        _frames_arg(args.frames),
        tuple(args.size),
        device=args.device,
        amp=args.amp,
        key_batch=args.key_batch,
        repeats=args.repeats,
    )
    print(machine_line(report["machine"]))
    print("| preset | frames | seconds | frames/s | peak RSS MiB | peak NumPy MiB | peak CUDA MiB |")
    print("|---|---|---|---|---|---|---|")
    for preset, r in report["results"].items():
        print(
            f"| {preset} | {r['frames']} | {r['seconds']} | {r['frames_per_second']} | "
            f"{r['peak_rss_mb']} | {r['peak_python_numpy_mb']} | {r['peak_cuda_mb'] or '-'} |"
        )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
