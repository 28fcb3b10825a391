"""One command that proves twoshot's CUDA paths on a GPU machine and measures them.

    python benchmarks/gpu_check.py                        # a GPU: every section, about 7 min on an H200
    python benchmarks/gpu_check.py --quick                # a GPU: smaller inputs, about 3 min
    python benchmarks/gpu_check.py --device cpu --quick   # any machine (the tests run it): seconds
    python benchmarks/gpu_check.py --json gpu.json --only inference train

It runs from a checkout without installing twoshot (``src/`` is put on the path), and before
any work it lists the Python packages each section needs that are missing, so a machine with
PyTorch but no network can be completed with copied wheels first (docs/performance.md,
"GPU check"). Sections, in order:

tests      ``pytest -m cuda``: an AMP training step with the grad scaler for ``tiny`` and
           ``stcn`` (finite loss, weights change, scaler state saved and restored by resume),
           fp16 / bf16 inference against fp32 on a model trained on the GPU (>= 99.5% of mask
           pixels agree), ``torch.compile`` inference against eager, training through NCCL
           (two processes with two GPUs, a group of one with one GPU), the pseudo-label bank
           sharded over two processes sharing a GPU against one process. On a CPU they are
           collected and skipped.
inference  frames/s and peak CUDA memory at 480p (854x480 frames, shorter side 480) for
           ``tiny``, ``stcn``, ``cutie-small`` and ``cutie-base`` with random weights, fp32
           and AMP, eager and compiled, next to the published figures, and a profile of
           ``stcn`` with AMP: where the time goes (``cutie-tiny`` instead of the Cutie
           presets on a CPU).
train      ``stcn`` optimisation steps at the reference batches (4 per GPU for the main
           stages, 8 for static pretraining) with AMP at 384x384: it/s, peak memory, and a
           profile (the share of the time the GPU is busy); the clip loader's clips/s with
           worker processes; the whole trainer with that loader. Together they say whether
           training is bound by the data, the host or the GPU.
sam2       SAM 2.1 (random weights whose object-score head sees the objects) on a generated
           480p video with 2 objects: sam2.1-tiny at its 1024 input on CUDA (``sam2-toy``
           on a CPU) in float32 and in its own bfloat16 autocast, and bfloat16 with
           ``inference.offload`` (features and memories in CPU memory): frames/s, peak CUDA
           memory, and the share of mask pixels equal to float32's (offload: to bfloat16's).
twoshot    the two-shot method on generated videos with the demo's data and schedule
           (``twoshot demo``): naive 2-shot, two-shot, full supervision (J&F with standard
           errors), the bank, the time per stage.

On a CPU, ``--quick`` does the least that proves each section runs (small frames, a few
steps, no profile); ``--profile`` adds the profiles there (they are on by default on CUDA).

Each section's rows are printed when it ends and the JSON (``--json``) is rewritten after
each, so a run cut short keeps what it measured. A section that raises is reported as
failed and the next one runs. Exit status: 0 when everything passed, 1 when a test or a
section failed, 2 when the check cannot start (missing packages, no CUDA for --device cuda).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SECTIONS: tuple[str, ...] = ("tests", "inference", "train", "sam2", "twoshot")

# Published inference speeds of the reference models (DAVIS 2017 val, 480p).
PUBLISHED = {
    "stcn": "STCN paper: 20.2 frames/s, 34.1 with AMP (GTX 2080 Ti); 62.8 compiled on an A100",
    "cutie-base": "Cutie paper: 36.4 frames/s (V100); 65.0 compiled on an A100",
}


@dataclass(frozen=True)
class Requirement:
    """A Python package: its import name, its pip name, the sections that need it ("" = none,
    only used by other parts of twoshot) and what it is for."""

    module: str
    pip: str
    sections: tuple[str, ...]
    purpose: str


REQUIREMENTS = (
    Requirement("torch", "torch", SECTIONS, "everything"),
    Requirement("numpy", "numpy", SECTIONS, "everything"),
    Requirement("PIL", "pillow", SECTIONS, "images and masks"),
    Requirement("yaml", "pyyaml", SECTIONS, "configuration presets"),
    Requirement("tqdm", "tqdm", SECTIONS, "progress bars"),
    Requirement("cv2", "opencv-python-headless", SECTIONS, "augmentation, resizing"),
    Requirement("tensorboard", "tensorboard", ("tests", "train", "twoshot"), "training logs"),
    Requirement("skimage", "scikit-image", ("twoshot",), "textures of the generated videos"),
    Requirement("pytest", "pytest", ("tests",), "the CUDA tests"),
    Requirement("av", "av", (), "video files and mp4 overlays (not used by this check)"),
    Requirement("matplotlib", "matplotlib", (), "the demo's bar plot (not used by this check)"),
)


Row = list[str]


# ---------------------------------------------------------------------------------------------
# Before any work: the package, the requirements, the device


def use_checkout_source() -> bool:
    """Make ``import twoshot`` work without an install: put the checkout's ``src/`` first on
    this process's path and on PYTHONPATH (for the test and worker processes). Returns True
    when that was needed."""
    if importlib.util.find_spec("twoshot") is not None:
        return False
    source = str(REPO / "src")
    sys.path.insert(0, source)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return True


def missing_requirements(sections: Sequence[str]) -> tuple[list[Requirement], list[Requirement]]:
    """(missing packages that ``sections`` need, missing packages they do not need)."""
    absent = [r for r in REQUIREMENTS if importlib.util.find_spec(r.module) is None]
    needed = [r for r in absent if set(r.sections) & set(sections)]
    return needed, [r for r in absent if r not in needed]


def requirements_message(needed: list[Requirement], sections: Sequence[str]) -> str:
    """What to bring, for sections that cannot run without it."""
    lines = ["gpu_check: cannot start; these packages are missing:"]
    for r in needed:
        wanted = ", ".join(s for s in r.sections if s in sections)
        lines.append(f"  {r.pip} (import {r.module}): {r.purpose}; needed by: {wanted}")
    lines.append(
        "Install them (pip install " + " ".join(r.pip for r in needed) + "), or on a machine "
        "without network copy their wheels next to the checkout and install those "
        "(docs/performance.md, 'GPU check'); or leave those sections out with --only."
    )
    return "\n".join(lines)


def machine_facts(device: str) -> dict[str, Any]:
    """``common.machine_info`` (CPU, Python, torch, the device, the load) and on CUDA the GPU's
    memory, count, compute capability and the CUDA, cuDNN and driver versions."""
    import torch

    from common import machine_info

    facts = machine_info(device)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        facts.update(
            {
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "compute_capability": f"{props.major}.{props.minor}",
                "driver": _nvidia_smi("driver_version"),
            }
        )
    return facts


def _nvidia_smi(field: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of GPU 0, None where nvidia-smi does not answer."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# Section: tests


def section_tests(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Run ``pytest -m cuda`` in a child process and report every test's outcome.

    Only the test modules that hold CUDA tests are collected: collecting the others would
    import packages this check does not need (PyAV, for one) and fail on a bare GPU machine.
    """
    xml = ctx.work / "junit-cuda.xml"
    modules = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in p.read_text(encoding="utf-8")
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-o",
        "addopts=",
        "-v",
        "-rfE",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        *modules,
    ]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=200")  # a hung NCCL group must not eat the whole check
    log = ctx.work / "pytest-cuda.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            returncode = child.wait(timeout=ctx.tests_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            returncode = -9
    seconds = time.perf_counter() - start
    output = log.read_text(encoding="utf-8", errors="replace")
    print(output[-8000:])
    cases = junit_cases(xml) if xml.is_file() else []
    if returncode == -9:
        raise RuntimeError(f"pytest was still running after {ctx.tests_timeout} s and was stopped")
    details = {
        "command": " ".join(cmd[1:]),
        "exit_code": returncode,
        "seconds": round(seconds, 1),
        "cases": cases,
    }
    if not cases:
        raise RuntimeError(f"pytest exited with {returncode} and reported no test")
    skipped = [c for c in cases if c["outcome"] == "skipped"]
    if len(skipped) == len(cases):
        reason = skipped[0]["message"] or "skipped"
        return [["tests", f"{len(cases)} CUDA tests", f"all skipped ({reason})"]], details
    rows = []
    for case in cases:
        result = f"{case['outcome']} ({case['seconds']:.1f} s)"
        if case["outcome"] in ("failed", "error"):
            result = f"**{case['outcome'].upper()}**: {case['message']}"
        rows.append(["tests", case["name"], result])
    return rows, details


def junit_cases(path: Path) -> list[dict[str, Any]]:
    """Each test case of a JUnit XML report: name, outcome (passed / failed / error /
    skipped), seconds, and the first line of the failure or skip message."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (found.get("message") or found.text or "").strip().splitlines()
                message = message[0][:300] if message else ""
                break
        cases.append(
            {
                "name": case.get("name", "?"),
                "outcome": outcome,
                "seconds": float(case.get("time", 0.0)),
                "message": message,
            }
        )
    return cases


# ---------------------------------------------------------------------------------------------
# Section: inference


@dataclass(frozen=True)
class EngineVariant:
    """One timed inference set-up."""

    preset: str
    amp: bool
    compile: bool
    exact: bool = False  # the bit-identical path instead of the default fast one

    @property
    def name(self) -> str:
        layout = ", exact" if self.exact else ""
        return (
            f"{self.preset}, {'AMP fp16' if self.amp else 'fp32'}{layout}, "
            f"{'compiled' if self.compile else 'eager'}"
        )


def inference_variants(cuda: bool, quick: bool) -> list[EngineVariant]:
    """tiny, stcn and cutie-tiny on a CPU; on CUDA tiny, stcn, cutie-small and cutie-base in
    fp32 and AMP (the default fast path), stcn with AMP on the exact path too, then stcn
    compiled (AMP only with --quick) and cutie-base compiled with AMP (not with --quick).
    Compiled variants come last: --budget may cut them."""
    if not cuda:
        return [EngineVariant(p, False, False) for p in ("tiny", "stcn", "cutie-tiny")]
    presets = ("tiny", "stcn", "cutie-small", "cutie-base")
    variants = [EngineVariant(p, amp, False) for p in presets for amp in (False, True)]
    variants.append(EngineVariant("stcn", True, False, exact=True))
    variants += [EngineVariant("stcn", amp, True) for amp in ((True,) if quick else (True, False))]
    if not quick:
        variants.append(EngineVariant("cutie-base", True, True))
    return variants


def section_inference(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Frames/s and peak memory of each variant on one generated 854x480 clip."""
    import torch

    from common import timed
    from twoshot.config import load_config
    from twoshot.data.fixtures import random_video
    from twoshot.inference import PropagationEngine
    from twoshot.model import build_model

    cuda = ctx.cuda
    # Multiples of 8 frames: on CUDA the key encoder takes 8 frames per call, and a shorter
    # last batch would make torch.compile compile a second graph inside the timed runs.
    cutie = ("cutie-small", "cutie-base")
    frames_of = (
        (
            {"tiny": 32, "stcn": 32, **dict.fromkeys(cutie, 32)}
            if ctx.quick
            else {"tiny": 96, "stcn": 96, **dict.fromkeys(cutie, 96)}
        )
        if cuda
        else (
            {"tiny": 4, "stcn": 2, "cutie-tiny": 2} if ctx.quick else {"tiny": 16, "stcn": 4, "cutie-tiny": 8}
        )
    )
    repeats = 2 if cuda else 1
    height, width = inference_frame_size(cuda, ctx.quick)
    video, labels = random_video(max(frames_of.values()), (height, width), object_ids=(1, 2), seed=0)
    models = {}
    for preset in frames_of:
        torch.manual_seed(0)
        models[preset] = build_model(load_config(preset).model).eval()
    rows: list[Row] = []
    results: dict[str, Any] = {}
    for variant in inference_variants(cuda, ctx.quick):
        clip = video[: frames_of[variant.preset]]
        if variant.compile and ctx.time_left() < COMPILE_MINIMUM:
            rows.append(
                [
                    "inference",
                    variant.name,
                    f"skipped: {max(ctx.time_left(), 0):.0f} s of --budget left for compiling",
                    "-",
                ]
            )
            continue
        # Each preset's memory settings (top-k 20 for STCN, 30 for Cutie), at the frames' size.
        config = dataclasses.replace(
            load_config(variant.preset).inference,
            size=height,
            device=ctx.device,
            amp=variant.amp,
            compile=variant.compile,
            exact=variant.exact,
        )
        engine = PropagationEngine(copy.deepcopy(models[variant.preset]), config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, warmup = timed(partial(engine.propagate, clip, {0: labels[0]}), engine.device)
        fell_back = [str(w.message) for w in caught if "without torch.compile" in str(w.message)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        best = min(
            timed(partial(engine.propagate, clip, {0: labels[0]}), engine.device)[1] for _ in range(repeats)
        )
        fps = len(clip) / best
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        results[variant.name] = {
            "frames": len(clip),
            "seconds": round(best, 3),
            "frames_per_second": round(fps, 1),
            "warmup_seconds": round(warmup, 1),
            "peak_cuda_mib": None if peak is None else round(peak),
            "compile_fell_back": fell_back,
        }
        memory = f", peak CUDA {peak:.0f} MiB" if peak is not None else ""
        compile_note = f", compiling took {warmup:.0f} s" if variant.compile else ""
        if fell_back:
            compile_note += f"; **torch.compile failed, ran eagerly**: {fell_back[0][:200]}"
        rows.append(
            [
                "inference",
                f"{variant.name}, {len(clip)} frames {width}x{height}, 2 objects",
                f"**{fps:.1f} frames/s**{memory}{compile_note}",
                PUBLISHED.get(variant.preset, "-"),
            ]
        )
        del engine
        if cuda:
            torch.cuda.empty_cache()
    details: dict[str, Any] = {
        "results": results,
        "settings": {
            "size": [height, width],
            "processing": f"shorter side {height}",
            "mem_every": 5,
            "top_k": 20,
            "objects": 2,
            "repeats": repeats,
            "weights": "random",
        },
    }
    if ctx.profile:
        profile_frames = 24 if cuda else 2
        profile = profile_inference(models["stcn"], video[:profile_frames], labels[0], ctx.device, amp=cuda)
        details["profile"] = profile
        rows.append(
            profile_row(
                "inference", f"profile, stcn{', AMP' if cuda else ''}, {profile_frames} frames", profile
            )
        )
        print(profile["table"])
    return rows, details


def inference_frame_size(cuda: bool, quick: bool) -> tuple[int, int]:
    """(height, width) of the inference section's frames: 480p, except the CPU's quick smoke
    run, which only has to show that every variant runs."""
    return (96, 160) if quick and not cuda else (480, 854)


def profile_inference(model: Any, clip: Any, first_mask: Any, device: str, amp: bool) -> dict[str, Any]:
    """:func:`profile_call` over one propagation of ``clip`` (after a warm-up one)."""
    from twoshot.config import InferenceConfig
    from twoshot.inference import PropagationEngine

    engine = PropagationEngine(copy.deepcopy(model), InferenceConfig(size=480, device=device, amp=amp))
    engine.propagate(clip, {0: first_mask})
    return {
        "frames": len(clip),
        **profile_call(lambda: engine.propagate(clip, {0: first_mask}), engine.device.type == "cuda"),
    }


def profile_call(fn: Callable[[], Any], cuda: bool) -> dict[str, Any]:
    """Run ``fn`` once as it is, then once under torch.profiler.

    Returns the plain run's wall time, the time the GPU spent in kernels and copies (CUDA)
    and its share of that wall time (the profiler slows the host, not the kernels, so the
    share is taken of the plain run: how far the work is from being bound by the GPU rather
    than by the host), the operators taking most GPU time (share of the GPU time) and most
    CPU time, and the profiler's table.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common import timed

    _, plain = timed(fn, "cuda" if cuda else None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()

    def device_us(event: Any) -> float:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

    def on_device(event: Any) -> bool:  # a kernel, copy or memset (not an operator)
        return str(getattr(event, "device_type", "")).endswith("CUDA")

    def top(chosen: list[Any], key: Callable[[Any], float], total: float) -> list[dict[str, Any]]:
        ranked = sorted(chosen, key=key, reverse=True)[:12]
        return [
            {
                "name": e.key,
                "self_us": round(key(e)),
                "calls": e.count,
                "share": key(e) / total if total else 0.0,
            }
            for e in ranked
            if key(e) > 0
        ]

    operators = [e for e in events if not on_device(e)]
    busy = sum(device_us(e) for e in events if on_device(e)) if cuda else 0.0
    cpu_total = sum(float(e.self_cpu_time_total) for e in operators)
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort_key, row_limit=15)
    except (AttributeError, KeyError, ValueError):
        table = events.table(sort_by="self_cpu_time_total", row_limit=15)
    return {
        "wall_ms": round(plain * 1000, 1),
        "device_busy_ms": round(busy / 1000, 1),
        "device_busy_share": busy / (plain * 1e6) if cuda else None,
        "top_device": top(operators, device_us, busy) if cuda else [],
        "top_cpu": top(operators, lambda e: float(e.self_cpu_time_total), cpu_total),
        "table": table,
    }


def profile_row(section: str, what: str, profile: dict[str, Any]) -> Row:
    """A table row of :func:`profile_call`'s result: the GPU's busy share and top operators."""
    if profile["device_busy_share"] is not None:
        ops = "; ".join(f"{op['name'][:60]} {op['share']:.0%}" for op in profile["top_device"][:3])
        return [
            section,
            what,
            f"GPU busy {profile['device_busy_ms']:.0f} ms of {profile['wall_ms']:.0f} ms "
            f"({profile['device_busy_share']:.0%}); most GPU time: {ops}",
            "-",
        ]
    ops = "; ".join(f"{op['name'][:60]} {op['share']:.0%}" for op in profile["top_cpu"][:3])
    return [section, what, f"{profile['wall_ms']:.0f} ms; top CPU operators: {ops}", "-"]


# ---------------------------------------------------------------------------------------------
# Section: training speed


def section_train(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Steps of the model alone, the clip loader, and the trainer end to end."""
    import torch

    from train_speed import make_videos, time_calls, time_loader, time_trainer, training_step

    cuda = ctx.cuda
    device = torch.device(ctx.device)
    workers = max(1, min(8, (os.cpu_count() or 2) - 2)) if cuda else 0
    rows: list[Row] = []
    details: dict[str, Any] = {"workers": workers}
    if cuda:
        preset, crop, batches, amp = "stcn", 384, (4, 8), True
        steps, loader_batches, iterations = (8, 8, 20) if ctx.quick else (20, 20, 50)
    else:
        preset, crop, batches, amp = "tiny", 96, (4,), False
        steps, loader_batches, iterations = (2, 2, 4) if ctx.quick else (10, 10, 12)
    precision = "AMP" if amp else "fp32"
    step_rate: dict[int, float] = {}
    profile: dict[str, Any] = {}
    for batch in batches:
        step = training_step(preset, batch, 3, crop, device, amp)
        result = time_calls(step, steps, device)
        if batch == batches[0] and ctx.profile:
            profile = profile_call(lambda step=step: [step() for _ in range(5)], cuda)
        details[f"step_{preset}_batch{batch}"] = result
        step_rate[batch] = result["it_per_s"] * batch
        memory = f", peak {result['peak_memory_gib']:.1f} GiB" if cuda else ""
        rows.append(
            [
                "train",
                f"{preset} step, batch {batch} x 3 frames at {crop}x{crop}, {precision}, data in memory",
                f"**{result['it_per_s']:.2f} it/s** ({step_rate[batch]:.0f} clips/s){memory}",
                "-",
            ]
        )
        del step
        if cuda:
            torch.cuda.empty_cache()
    if profile:
        details["profile"] = profile
        print(profile["table"])
        rows.append(
            profile_row("train", f"profile, 5 {preset} steps at batch {batches[0]}, {precision}", profile)
        )
    # The CPU's quick run only shows that the loader and the trainer run.
    video_size = (128, 160) if ctx.quick and not cuda else (480, 854)
    root = make_videos(ctx.work / "train-videos", 4, 20, video_size)
    loader = time_loader(root, crop, batches[0], workers, loader_batches)
    details["loader_clips_per_s"] = loader
    rows.append(
        [
            "train",
            f"clip loader, {crop}x{crop} crops of {video_size[1]}x{video_size[0]} JPEG videos, "
            f"{workers} workers",
            f"**{loader:.0f} clips/s**",
            "-",
        ]
    )
    rate = time_trainer(
        root,
        iterations,
        workers,
        ctx.work / f"trainer-{time.time_ns()}",
        preset=preset,
        batch=batches[0],
        crop=crop,
        device=ctx.device,
        amp=amp,
    )
    details["trainer_it_per_s"] = rate
    bound = (
        "data-bound: the loader gives fewer clips/s than the steps take"
        if loader < step_rate[batches[0]]
        else "not data-bound: the loader keeps up with the steps"
    )
    details["verdict"] = bound
    rows.append(
        [
            "train",
            f"trainer end to end, {preset}, batch {batches[0]}, {workers} workers, "
            f"{precision}, {iterations} iterations",
            f"**{rate:.2f} it/s** ({rate * batches[0]:.0f} clips/s); {bound}",
            "-",
        ]
    )
    return rows, details


# ---------------------------------------------------------------------------------------------
# Section: the two-shot method on generated videos


def section_sam2(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """SAM 2's speed, memory and precision agreement (see the module docstring)."""
    import numpy as np
    import torch

    from common import timed
    from twoshot.config import load_config
    from twoshot.data.fixtures import random_video
    from twoshot.inference import PropagationEngine
    from twoshot.model import build_model

    cuda = ctx.cuda
    preset = "sam2.1-tiny" if cuda else "sam2-toy"
    frames = (16 if ctx.quick else 48) if cuda else (3 if ctx.quick else 8)
    height, width = inference_frame_size(cuda, ctx.quick)
    video, labels = random_video(frames, (height, width), object_ids=(1, 2), seed=0)
    torch.manual_seed(0)
    config = load_config(preset)
    model = build_model(config.model).eval()
    with torch.no_grad():  # random weights that see the objects: the masks are not empty
        model.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    variants = {
        "fp32": {"amp": False},
        "bf16": {"amp": True, "amp_dtype": "bfloat16"},
        "bf16, offload": {"amp": True, "amp_dtype": "bfloat16", "offload": True},
    }
    rows: list[Row] = []
    results: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    for name, settings in variants.items():
        inference = dataclasses.replace(config.inference, device=ctx.device, **settings)
        engine = PropagationEngine(model, inference)
        timed(partial(engine.propagate, video[:2], {0: labels[0]}), engine.device)  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result, seconds = timed(partial(engine.propagate, video, {0: labels[0]}), engine.device)
        masks[name] = result.masks
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        against = "fp32" if name == "bf16" else "bf16" if name == "bf16, offload" else None
        equal = None if against is None else float(np.mean(result.masks[1:] == masks[against][1:]))
        results[name] = {
            "frames": frames,
            "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 2),
            "peak_cuda_mib": None if peak is None else round(peak),
            "pixels_equal_to": against,
            "pixels_equal": equal,
            "foreground": float(np.mean(result.masks[1:] > 0)),
        }
        memory = f", peak CUDA {peak:.0f} MiB" if peak is not None else ""
        agree = "" if equal is None else f"; {100 * equal:.3f}% of mask pixels equal to {against}'s"
        rows.append(
            [
                "sam2",
                f"{preset}, {name}, {frames} frames {width}x{height}, 2 objects",
                f"**{frames / seconds:.2f} frames/s**{memory}{agree}",
                "SAM 2.1 README: 91.2 frames/s (tiny, A100, compiled)" if cuda else "-",
            ]
        )
        del engine
        if cuda:
            torch.cuda.empty_cache()
    return rows, {"preset": preset, "size": [height, width], "results": results}


def twoshot_scale(cuda: bool, quick: bool) -> tuple[str, Any, int]:
    """(name, ``twoshot.demo.DemoScale``, DataLoader workers) of the two-shot section.

    On a GPU: the demo's own data and schedule (``twoshot demo``; ``--quick``: the demo's
    quick flavour), so its scores can be read against the CPU demo's in docs/results.md. On
    an H200 the tiny model trains at about 15 iterations/s, bound by the host, so the
    label-efficiency benchmark's GPU scale (5 000 + 8 000 iterations per model) does not fit
    the check's minutes. On a CPU: a smoke run of a few iterations.
    """
    from twoshot.demo import FULL, QUICK, DemoScale

    if cuda:
        return ("demo-quick", QUICK, 4) if quick else ("demo", FULL, 4)
    if quick:
        return (
            "cpu-smoke",
            DemoScale(
                videos=3,
                val_videos=2,
                frames=6,
                size=64,
                static_images=8,
                static_iterations=3,
                iterations=4,
                end_warm=1,
                phase2_start_update=2,
                inference_scale=1.0,
            ),
            0,
        )
    return "demo-quick", QUICK, 0


def section_twoshot(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Generate videos and run the pipeline (static -> phase 1 -> bank -> phase 2, naive and
    full baselines) at the scale of :func:`twoshot_scale`."""
    from twoshot.demo import demo_config, demo_data
    from twoshot.pipeline import run_pipeline
    from twoshot.report import format_report

    name, scale, workers = twoshot_scale(ctx.cuda, ctx.quick)
    folder = ctx.work / f"twoshot-{name}"
    start = time.perf_counter()
    demo_data(scale, folder / "data")
    synth_seconds = time.perf_counter() - start
    config = demo_config(scale, folder / "data", folder / "run", ctx.device)
    config.static.num_workers = config.main.num_workers = workers
    if name == "cpu-smoke":  # two clips a step are enough to show each stage runs
        config.static.batch_size = config.main.batch_size = 2
    report = run_pipeline(config, log=lambda line: print(f"  {line}"), progress=False)
    print(format_report(report))
    rows: list[Row] = [
        [
            "twoshot",
            f"data and schedule ({name})",
            f"{scale.videos} training + {scale.val_videos} validation videos x "
            f"{scale.frames} frames at {scale.size} px; static pretraining "
            f"{scale.static_iterations} iterations, each video model {scale.iterations}; "
            f"{workers} loader workers",
            "-",
        ]
    ]
    for model in report.models:
        error = model.standard_error()
        rows.append(
            [
                "twoshot",
                f"{model.title} ({100 * model.labeled_share:.0f}% labels)",
                f"**{100 * model.j_and_f:.1f} J&F**" + (f" ± {100 * error:.1f}" if error else ""),
                "-",
            ]
        )
    if report.bank_j_and_f is not None:
        rows.append(
            [
                "twoshot",
                "pseudo-label bank against the training videos' ground truth",
                f"{100 * report.bank_j_and_f:.1f} J&F",
                "-",
            ]
        )
    inference = sum(v for k, v in report.stage_seconds.items() if k.startswith("infer:"))
    stages = ", ".join(
        [
            f"{name} {seconds:.0f} s"
            for name, seconds in report.stage_seconds.items()
            if not name.startswith("infer:") and name != "budget"
        ]
        + [f"segmenting the validation videos {inference:.0f} s"]
    )
    rows.append(["twoshot", "time per stage", f"data {synth_seconds:.0f} s, {stages}", "-"])
    bank = report.bank_j_and_f
    return rows, {
        "scale": {"name": name, "workers": workers, **scale.__dict__},
        "synth_seconds": round(synth_seconds, 1),
        "report": format_report(report),
        "scores": {m.name: round(100 * m.j_and_f, 2) for m in report.models},
        "bank_j_and_f": None if bank is None else round(100 * bank, 2),
        "stage_seconds": report.stage_seconds,
    }


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Context:
    """What every section needs: device, size, work folder, whether to profile, the CUDA
    tests' time limit (None: none) and the deadline of --budget (``time.monotonic()``
    seconds; None: no deadline)."""

    device: str
    quick: bool
    work: Path
    tests_timeout: int | None
    profile: bool = False
    deadline: float | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def time_left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


# Seconds a section needs at least on a GPU (--budget skips a section with less time left)
# and that a compiled inference variant needs (compiling the stcn network takes a minute).
SECTION_MINIMUM = {"tests": 120, "inference": 80, "train": 30, "sam2": 60, "twoshot": 150}
COMPILE_MINIMUM = 100


SECTION_FUNCTIONS: dict[str, Callable[[Context], tuple[list[Row], dict[str, Any]]]] = {
    "tests": section_tests,
    "inference": section_inference,
    "train": section_train,
    "sam2": section_sam2,
    "twoshot": section_twoshot,
}


def markdown(rows: list[Row]) -> str:
    """The rows as one Markdown table."""
    from common import markdown_table

    return markdown_table(
        ["section", "check", "result", "published / reference"],
        [row + ["-"] * (4 - len(row)) for row in rows],
    )


def run_check(
    device: str,
    quick: bool,
    sections: Sequence[str],
    work: Path,
    json_path: Path | None,
    budget: float | None = None,
    profile: bool | None = None,
) -> tuple[dict[str, Any], int]:
    """Run ``sections`` in order; returns (the report, the exit status 0 or 1).

    budget: seconds for the whole check; a section (or a compiled inference variant) that
    would start with less time left than it needs is skipped and says so.
    profile: profile inference and training steps (None: on CUDA only).
    """
    from twoshot.fsutil import write_json

    cuda = device.startswith("cuda")
    ctx = Context(
        device,
        quick,
        work,
        # A hung NCCL group must not eat a GPU's lent minutes; on a CPU the tests are only
        # collected and skipped, so no limit there.
        tests_timeout=330 if cuda else None,
        profile=cuda if profile is None else profile,
        deadline=None if budget is None else time.monotonic() + budget,
    )
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": machine_facts(device),
        "quick": quick,
        "sections": {},
    }
    print("machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()))
    rows: list[Row] = []
    failed = False
    for name in sections:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        if ctx.cuda and ctx.time_left() < SECTION_MINIMUM[name]:
            skipped = [
                [
                    name,
                    "section",
                    f"skipped: {max(ctx.time_left(), 0):.0f} s of --budget "
                    f"left, it needs about {SECTION_MINIMUM[name]} s",
                ]
            ]
            report["sections"][name] = {"status": "skipped", "seconds": 0.0, "rows": skipped, "details": {}}
            rows += skipped
            print(markdown(skipped))
            continue
        try:
            section_rows, details = SECTION_FUNCTIONS[name](ctx)
            status = "failed" if any("FAILED" in r[2] or "ERROR" in r[2] for r in section_rows) else "ok"
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            traceback.print_exc()
            section_rows = [[name, "section", f"**FAILED**: {type(exc).__name__}: {exc}"]]
            details, status = {"traceback": traceback.format_exc()}, "failed"
        seconds = time.perf_counter() - start
        failed = failed or status == "failed"
        report["sections"][name] = {
            "status": status,
            "seconds": round(seconds, 1),
            "rows": section_rows,
            "details": details,
        }
        rows += section_rows
        print(markdown(section_rows))
        print(f"({name}: {status}, {seconds:.0f} s)", flush=True)
        if json_path is not None:
            write_json(json_path, report)
    report["table"] = markdown(rows)
    if json_path is not None:
        write_json(json_path, report)
    return report, 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cuda | cuda:N | cpu")
    parser.add_argument("--quick", action="store_true", help="smaller inputs and schedules")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"run these sections only ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the table and every figure as JSON (rewritten after each section)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip what would start too late to end within this many seconds",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile inference and training steps (default: on CUDA only)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for generated data and runs (default: a temporary folder, removed)",
    )
    args = parser.parse_args(argv)
    sections = [s for s in SECTIONS if args.only is None or s in args.only]

    from_checkout = use_checkout_source()
    needed, optional = missing_requirements(sections)
    if needed:
        print(requirements_message(needed, sections), file=sys.stderr)
        return 2
    for r in optional:
        print(f"note: {r.pip} is missing: {r.purpose}")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, train_speed
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: --device {device} but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu for the CPU flavour",
            file=sys.stderr,
        )
        return 2
    if from_checkout:
        print(f"twoshot is not installed: using {REPO / 'src'}")
    print(f"gpu_check: sections {', '.join(sections)} on {device}{' (quick)' if args.quick else ''}")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        report, status = run_check(
            device, args.quick, sections, args.work, args.json, args.budget, args.profile
        )
    else:
        with tempfile.TemporaryDirectory(prefix="twoshot-gpu-check-") as tmp:
            report, status = run_check(
                device, args.quick, sections, Path(tmp), args.json, args.budget, args.profile
            )
    print("\n" + report["table"])
    if args.json is not None:
        print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
