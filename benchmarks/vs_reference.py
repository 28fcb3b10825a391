"""twoshot against the reference implementations, whole processes side by side.

Two pieces of work, each done by the reference code and by twoshot on the same generated
data with the same STCN-format weights:

- **inference**: STCN's own ``eval_generic.py`` (from a checkout of hkchengrex/STCN given
  with ``--stcn``) against ``twoshot infer`` on a generic-layout dataset (JPEG frames, the
  first frame's masks);
- **bank**: the paper's pseudo-label bank (from a checkout of the two-shot paper's code given
  with ``--seed-repo``): its four ``eval_youtube_phase2.py`` runs as its DAVIS scripts call
  them (forward and backward, with both labeled frames and with the second only;
  ``--mem_every 5 --output_all --davis``), then ``phase2_scripts/merge_left_right.py``,
  against ``twoshot pseudo-label`` with the same two labeled frames per video.

- **cutie**: Cutie's own inference (from a checkout of hkchengrex/Cutie given with
  ``--cutie``; its ``InferenceCore`` with its evaluation config, driven over the JPEG frames
  as its ``eval_vos.py`` does, :func:`cutie_reference.segment_folders`: that script itself
  needs Hydra and CUDA) against ``twoshot infer --preset cutie-small`` (``--cutie-model``)
  on the same generic-layout data, with the same random Cutie weights.

Each variant is a fresh process, timed from start to exit (wall, user and system CPU
seconds), in interleaved rounds (the order rotates and reverses from round to round); the
report gives the medians and the median of the per-round ratios, and the share of mask
pixels on which the outputs agree. ``--variants`` runs several twoshot variants in the same
rounds against the same reference runs, e.g. ``default= bf16='--amp --amp-dtype bfloat16'
onnxruntime='--runtime onnxruntime' openvino='--runtime openvino'``; ``--env KEY=VALUE``
sets environment variables of every process (``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2`` restricts torch's kernels to AVX2; ONNX Runtime and OpenVINO
have no such switch and may still use AVX-512).

Nothing is vendored or downloaded: the checkouts are imported from the paths given, and
run unedited. On a machine without CUDA (or without torchvision) the benchmark makes them
runnable by installing stand-ins *in the reference's process* before running its script:

- ``.cuda()`` on tensors and modules returns them unchanged, ``device='cuda'`` in tensor
  factories means the CPU, and ``torch.cuda.amp.autocast`` does nothing (AMP is CUDA-only
  in the reference; twoshot also computes in fp32 on a CPU);
- ``torchvision``, when it cannot be imported: the ``transforms`` the test datasets use
  (``ToTensor``, ``Normalize``, ``Resize``, ``Compose``) with torchvision's arithmetic, and
  ``models.resnet50`` as a randomly initialised ResNet-50 trunk with torchvision's parameter
  names (twoshot's, the same architecture; the weights are replaced by ``--model`` anyway);
- ImageNet downloads (``model_zoo.load_url``) return nothing, and ``progressbar`` is a
  pass-through when it is not installed.

The paper's script cannot take a DAVIS path (``--davis_path`` is read through a name that is
only set when the option is absent) and its merge script has its folders written in, so the
benchmark lays the data out where they look: ``W/DAVIS/2017`` and ``W/YouTube`` next to the
folders it runs them from.

    python benchmarks/vs_reference.py --stcn ~/src/STCN --seed-repo ~/src/Two-shot-VOS
    python benchmarks/vs_reference.py --stcn ~/src/STCN --only inference --rounds 3
    python benchmarks/vs_reference.py --cutie ~/src/Cutie --only cutie --videos 1 --frames 10 \
        --variants default= onnxruntime='--runtime onnxruntime'

Defaults: 2 videos x 12 frames at 480x640, 3 objects, labeled frames 2 and 9, random
weights with the key projection scaled by ``KEY_SCALE`` (the reference's top-k softmax
overflows on large random keys; ``--weights`` takes an STCN-format ``.pth`` instead, e.g.
the published ``stcn.pth``).
``run(...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
LABELED = (2, 9)
KEY_SCALE = 0.05  # random key projection scaled down (see make_weights)
PAPER_RUNS: dict[str, list[str]] = {
    # output folder (as merge_left_right.py names them) -> extra flags of the run
    "phase1_left_480p": [],
    "phase1_right_480p": ["--reverse"],
    "phase1leftsecgt_480p": ["--only_sec_gt"],
    "phase1_rightsecgt_480p": ["--reverse", "--only_sec_gt"],
}


# --- the reference's process: stand-ins, then its script -------------------------------


def _torchvision_stand_in() -> None:
    """Register a minimal ``torchvision`` (transforms + models.resnet50) in ``sys.modules``."""
    import enum

    import torch
    import torch.nn.functional as F

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    class Compose:
        def __init__(self, steps: Sequence[Callable[[Any], Any]]) -> None:
            self.steps = list(steps)

        def __call__(self, x: Any) -> Any:
            for step in self.steps:
                x = step(x)
            return x

    class ToTensor:
        def __call__(self, image: Any) -> torch.Tensor:
            array = np.array(image, dtype=np.uint8, copy=True)
            return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)

    class Normalize:
        def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
            self.mean = torch.tensor(mean).view(-1, 1, 1)
            self.std = torch.tensor(std).view(-1, 1, 1)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    class Resize:
        """Shorter side to ``size`` (longer side truncated), antialiased, as torchvision."""

        def __init__(self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> None:
            self.size, self.mode = size, interpolation.value

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            short, long = (h, w) if h <= w else (w, h)
            new = (self.size, int(self.size * long / short))
            new_hw = new if h <= w else new[::-1]
            if new_hw == (h, w):
                return x
            batch = x[None] if x.dim() == 3 else x
            smooth = self.mode != "nearest"
            kwargs = {"align_corners": False, "antialias": True} if smooth else {}
            out = F.interpolate(batch.float(), size=new_hw, mode=self.mode, **kwargs)
            return out[0] if x.dim() == 3 else out

    def resnet50(pretrained: bool = False, **_: Any) -> torch.nn.Module:
        from twoshot.model.resnet import ResNetTrunk

        return ResNetTrunk("bottleneck", [3, 4, 6])

    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    models = types.ModuleType("torchvision.models")
    for cls in (InterpolationMode, Compose, ToTensor, Normalize, Resize):
        setattr(transforms, cls.__name__, cls)
    models.resnet50 = resnet50  # type: ignore[attr-defined]
    torchvision.transforms, torchvision.models = transforms, models  # type: ignore[attr-defined]
    sys.modules.update(
        {"torchvision": torchvision, "torchvision.transforms": transforms, "torchvision.models": models}
    )


def _cuda_on_cpu() -> None:
    """Make the reference's CUDA-only calls run on the CPU (see the module docstring)."""
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]

    def on_cpu(factory: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return factory(*args, **kwargs)

        return wrapped

    for name in ("zeros", "ones", "empty", "full", "tensor", "arange", "zeros_like", "ones_like"):
        setattr(torch, name, on_cpu(getattr(torch, name)))
    torch.cuda.amp.autocast = lambda *args, **kwargs: contextlib.nullcontext()  # type: ignore[assignment]


def run_reference_script(checkout: Path, script: str, argv: Sequence[str]) -> None:
    """In this process: install the stand-ins, then run ``checkout/script`` as ``__main__``."""
    install_stand_ins(checkout)
    sys.argv = [script, *argv]
    runpy.run_path(str(checkout / script), run_name="__main__")


def install_stand_ins(checkout: Path) -> None:
    """In this process (the reference's): the stand-ins of the module docstring, and
    ``checkout`` first on ``sys.path`` so that its packages (``model``, ``util``) import."""
    import torch
    from torch.utils import model_zoo

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision that fails to import is as good as none
        _torchvision_stand_in()
    try:
        import progressbar  # noqa: F401
    except ImportError:
        bar = types.ModuleType("progressbar")
        bar.progressbar = lambda iterable, *args, **kwargs: iterable  # type: ignore[attr-defined]
        sys.modules["progressbar"] = bar
    model_zoo.load_url = lambda *args, **kwargs: {}  # the weights come from --model
    if not torch.cuda.is_available():
        _cuda_on_cpu()
    sys.path.insert(0, str(checkout))


# --- data, weights and commands ---------------------------------------------------------


@dataclass
class Layout:
    """Where everything lives under the work folder ``root``."""

    root: Path
    videos: list[str] = field(default_factory=list)

    @property
    def generic(self) -> Path:
        return self.root / "generic"

    @property
    def davis(self) -> Path:
        return self.root / "DAVIS" / "2017" / "trainval"

    @property
    def paper_gt(self) -> Path:
        return self.root / "DAVIS" / "2017" / "phase2" / "davis_gt"

    @property
    def budget(self) -> Path:
        return self.root / "budget.json"

    @property
    def weights(self) -> Path:
        return self.root / "stcn.pth"

    @property
    def paper_eval_cwd(self) -> Path:
        """Where the paper's eval script runs: it opens ``../DAVIS/2017``."""
        return self.root / "run"

    @property
    def paper_merge_cwd(self) -> Path:
        """Where the paper's merge runs: it opens ``../../YouTube`` and ``../../vos_phase2``."""
        return self.root / "run" / "merge"


def make_data(layout: Layout, videos: int, frames: int, size: tuple[int, int], objects: int) -> None:
    """Generate the videos in the generic layout (first-frame masks), in DAVIS trainval layout
    with the labeled frames' masks (twoshot), and in the paper's phase-2 layout."""
    from twoshot.data.fixtures import make_generic, random_video
    from twoshot.data.masks import write_mask
    from twoshot.fsutil import write_json

    ids = tuple(range(1, objects + 1))
    data = make_generic(
        layout.generic, {f"video{v}": frames for v in range(videos)}, size=size, object_ids=ids
    )
    layout.videos = sorted(data.frames)
    budget = {}
    for name in layout.videos:
        jpegs = layout.davis / "JPEGImages" / "480p" / name
        jpegs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(layout.generic / "JPEGImages" / name, jpegs)
        for index in LABELED:
            stem = data.frame_names[name][index]
            for folder in (layout.davis / "Annotations" / "480p" / name, layout.paper_gt / name):
                write_mask(folder / f"{stem}.png", data.labels[name][index])
        budget[name] = [f"{data.frame_names[name][i]}.jpg" for i in LABELED]
    sets = layout.davis / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{name}\n" for name in layout.videos))
    write_json(layout.budget, budget)
    # The paper's script reads its palette from DAVIS's blackswan; its merge looks for the
    # labeled frames under YouTube/phase2/yv_gt_480p.
    _, labels = random_video(1, size, object_ids=ids)
    write_mask(layout.davis / "Annotations" / "480p" / "blackswan" / "00000.png", labels[0])
    (layout.root / "YouTube" / "phase2").mkdir(parents=True, exist_ok=True)
    os.symlink(layout.paper_gt, layout.root / "YouTube" / "phase2" / "yv_gt_480p")
    layout.paper_merge_cwd.mkdir(parents=True, exist_ok=True)


def make_weights(layout: Layout, weights: Path | None) -> None:
    """Copy ``weights`` (STCN format) into the work folder, or save random STCN weights."""
    import torch

    if weights is not None:
        shutil.copy(weights, layout.weights)
        return
    from twoshot.config import load_config
    from twoshot.model.registry import build_model

    torch.manual_seed(0)
    model = build_model(load_config(preset="stcn").model)
    with torch.no_grad():
        # Random keys at 480p have norms in the tens: the reference's top-k softmax takes exp()
        # of affinities without subtracting their maximum and overflows to NaN (background
        # everywhere). Smaller keys keep it finite, as trained weights do.
        model.key_proj.key_proj.weight.mul_(KEY_SCALE)
    torch.save(model.state_dict(), layout.weights)


def make_cutie_weights(layout: Layout, model: str) -> Path:
    """Save random Cutie weights (``cutie-<model>``'s initialisation with BatchNorm statistics
    and affine terms randomised as :func:`cutie_reference.randomise` does) as a state dict."""
    import torch

    from cutie_reference import randomise
    from twoshot.config import load_config
    from twoshot.model.cutie import Cutie

    torch.manual_seed(0)
    network = Cutie(load_config(f"cutie-{model}").model).eval()
    randomise(network, 0)
    path = layout.root / f"cutie-{model}.pth"
    torch.save(network.state_dict(), path)
    return path


def reference_command(checkout: Path, script: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs a reference script through this benchmark's stand-ins."""
    return [sys.executable, str(HERE), "--run-reference", str(checkout), script, "--", *argv]


def twoshot_command(*argv: str) -> list[str]:
    """The ``twoshot`` command line (through the running Python, so the same environment)."""
    return [sys.executable, "-m", "twoshot", *argv]


@dataclass
class Usage:
    """One timed run: wall seconds, and the user and system CPU seconds of its processes."""

    wall: float
    user: float
    system: float


def timed_processes(commands: Sequence[tuple[list[str], Path]], env: dict[str, str]) -> Usage:
    """Run ``(command, cwd)`` pairs one after another; their total wall, user and system time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for command, cwd in commands:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
            )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Usage(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def _twoshot_model_options(layout: Layout) -> list[str]:
    """The options every twoshot command here takes: the weights, STCN's preset, no progress bar."""
    return ["--checkpoint", str(layout.weights), "--preset", "stcn", "--no-progress"]


def twoshot_infer_variants(
    layout: Layout, out: Path, model_options: Sequence[str], variants: dict[str, list[str]]
) -> dict[str, Any]:
    """``twoshot infer`` on the generic data once per variant (name -> extra options):
    name -> (commands, output folder)."""
    result = {}
    for name, extra in variants.items():
        folder = out / f"twoshot-infer-{name}"
        options = ["--dataset", "generic", "--data", str(layout.generic), "--out", str(folder)]
        result[name] = ([(twoshot_command("infer", *options, *model_options, *extra), layout.root)], folder)
    return result


def cutie_variants(
    layout: Layout, cutie: Path, model: str, out: Path, variants: dict[str, list[str]]
) -> dict[str, Any]:
    """Cutie's InferenceCore over the generic data and ``twoshot infer`` per variant: name ->
    (commands, output folder), the reference first."""
    weights = make_cutie_weights(layout, model)
    ref_out = out / "cutie-infer"
    argv = [str(cutie), model, str(weights), str(layout.generic), str(ref_out)]
    reference = [([sys.executable, str(HERE), "--run-cutie-reference", *argv], layout.root)]
    options = ["--checkpoint", str(weights), "--preset", f"cutie-{model}", "--no-progress"]
    return {"reference": (reference, ref_out), **twoshot_infer_variants(layout, out, options, variants)}


def inference_variants(
    layout: Layout, stcn: Path, out: Path, variants: dict[str, list[str]]
) -> dict[str, Any]:
    """STCN's eval_generic.py and ``twoshot infer`` per variant: name -> (commands, output
    folder), the reference first."""
    ref_out = out / "stcn-infer"
    reference = [
        (
            reference_command(
                stcn,
                "eval_generic.py",
                [
                    "--model",
                    str(layout.weights),
                    "--data_path",
                    str(layout.generic),
                    "--output",
                    str(ref_out),
                ],
            ),
            layout.root,
        )
    ]
    ours = twoshot_infer_variants(layout, out, _twoshot_model_options(layout), variants)
    return {"reference": (reference, ref_out), **ours}


def bank_variants(layout: Layout, seed_repo: Path, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    """The paper's four runs + merge and ``twoshot pseudo-label``: name -> (commands, outputs)."""
    vos = layout.root / "vos_phase2"
    reference = []
    for folder, flags in PAPER_RUNS.items():
        argv = [
            "--model",
            str(layout.weights),
            "--output",
            str(vos / folder),
            "--mem_every",
            "5",
            "--output_all",
            "--davis",
            *flags,
        ]
        reference.append(
            (reference_command(seed_repo, "eval_youtube_phase2.py", argv), layout.paper_eval_cwd)
        )
    reference.append(
        (reference_command(seed_repo, "phase2_scripts/merge_left_right.py", []), layout.paper_merge_cwd)
    )
    ours_out = out / "twoshot-bank"
    options = ["--dataset", "davis", "--data", str(layout.davis), "--split", "train", "--budget",
               str(layout.budget), "--out", str(ours_out), "--mem-every", "5", "--size", "-1"]  # fmt: skip
    ours = [(twoshot_command("pseudo-label", *options, *_twoshot_model_options(layout), *extra), layout.root)]
    return {"reference": (reference, vos / "phase1_merge_480p" / "Annotations"), "twoshot": (ours, ours_out)}


def agreement(reference: Path, ours: Path, videos: Sequence[str]) -> tuple[float, int]:
    """Share of pixels with the same label over every PNG the reference wrote, and the count."""
    from twoshot.data.masks import read_mask

    same = total = files = 0
    for video in videos:
        for path in sorted((reference / video).glob("*.png")):
            ref, _ = read_mask(path)
            mine, _ = read_mask(ours / video / path.name)
            same += int((ref == mine).sum())
            total += ref.size
            files += 1
    if not files:
        raise SystemExit(f"{reference}: the reference wrote no masks")
    return same / total, files


def clear(paths: Sequence[Path]) -> None:
    """Remove earlier outputs so that every run does the whole work."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def compare(
    name: str,
    variants: dict[str, Any],
    rounds: int,
    env: dict[str, str],
    videos: Sequence[str],
    outputs_to_clear: dict[str, Path],
) -> dict[str, Any]:
    """Interleaved rounds of the reference and every other variant (the order rotates by one
    and reverses from round to round); the reference's medians, and for each other variant
    its medians, its speed-up (median of the per-round ratios) and its agreement."""
    names = list(variants)
    usage: dict[str, list[Usage]] = {n: [] for n in names}
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        for variant in order if index % 2 == 0 else order[::-1]:
            clear([outputs_to_clear[variant]])
            commands, _ = variants[variant]
            usage[variant].append(timed_processes(commands, env))
            last = usage[variant][-1]
            print(
                f"  {name} round {index + 1} {variant}: {last.wall:.1f} s "
                f"(user {last.user:.1f}, system {last.system:.1f})",
                flush=True,
            )

    def summary(variant: str) -> dict[str, Any]:
        runs = usage[variant]
        return {
            **{
                f"{a}_s": round(statistics.median(getattr(u, a) for u in runs), 2)
                for a in ("wall", "user", "system")
            },
            "walls": [round(u.wall, 1) for u in runs],
            "cpus": [round(u.user + u.system, 1) for u in runs],
        }

    result: dict[str, Any] = {"reference": summary("reference"), "variants": {}}
    for variant in names[1:]:
        share, files = agreement(variants["reference"][1], variants[variant][1], videos)
        ratios = [r.wall / t.wall for r, t in zip(usage["reference"], usage[variant], strict=True)]
        result["variants"][variant] = {
            **summary(variant),
            "speedup": round(statistics.median(ratios), 3),
            "speedups": [round(r, 3) for r in ratios],
            # CPU seconds (user + system): steadier than wall time on a shared machine.
            "cpu_speedup": round(
                statistics.median(
                    (r.user + r.system) / (t.user + t.system)
                    for r, t in zip(usage["reference"], usage[variant], strict=True)
                ),
                3,
            ),
            "agreement": share,
            "masks_compared": files,
        }
    return result


def run(
    stcn: Path | None,
    seed_repo: Path | None,
    *,
    cutie: Path | None = None,
    cutie_model: str = "small",
    videos: int = 2,
    frames: int = 12,
    size: tuple[int, int] = (480, 640),
    objects: int = 3,
    rounds: int = 3,
    weights: Path | None = None,
    twoshot_args: Sequence[str] = (),
    variants: dict[str, list[str]] | None = None,
    extra_env: dict[str, str] | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Generate the data, then time each piece of work whose checkout is given. ``variants``:
    twoshot variants of the inference comparisons (name -> extra options; default
    ``{"default": twoshot_args}``); ``extra_env``: environment of every process."""
    from common import machine_info

    if stcn is not None and not (stcn / "eval_generic.py").is_file():
        raise SystemExit(f"{stcn}: not an STCN checkout (no eval_generic.py)")
    if seed_repo is not None and not (seed_repo / "eval_youtube_phase2.py").is_file():
        raise SystemExit(
            f"{seed_repo}: not a checkout of the two-shot paper's code (no eval_youtube_phase2.py)"
        )
    if cutie is not None and not (cutie / "cutie" / "inference" / "inference_core.py").is_file():
        raise SystemExit(f"{cutie}: not a Cutie checkout (no cutie/inference/inference_core.py)")
    if stcn is None and seed_repo is None and cutie is None:
        raise SystemExit("give --stcn, --seed-repo and/or --cutie")
    infer_variants = variants or {"default": list(twoshot_args)}
    root = Path(work or tempfile.mkdtemp(prefix="vs-reference-"))
    layout = Layout(root)
    make_data(layout, videos, frames, size, objects)
    make_weights(layout, weights)
    out = root / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    report: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "env": dict(extra_env or {}),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "data": {
            "videos": videos,
            "frames": frames,
            "size": list(size),
            "objects": objects,
            "labeled": list(LABELED),
            "weights": str(weights) if weights else "random",
        },
        "twoshot_args": list(twoshot_args),
        "variants": infer_variants,
    }
    pieces: list[tuple[str, dict[str, Any], dict[str, Path]]] = []
    if stcn is not None:
        found = inference_variants(layout, stcn, out, infer_variants)
        pieces.append(("inference", found, {v: found[v][1] for v in found}))
    if cutie is not None:
        found = cutie_variants(layout, cutie, cutie_model, out, infer_variants)
        pieces.append(("cutie", found, {v: found[v][1] for v in found}))
    if seed_repo is not None:
        found = bank_variants(layout, seed_repo, out, twoshot_args)
        pieces.append(("bank", found, {"reference": root / "vos_phase2", "twoshot": found["twoshot"][1]}))
    for name, found, outputs in pieces:
        report[name] = compare(name, found, rounds, env, layout.videos, outputs)
    report["load_average_end"] = round(os.getloadavg()[0], 2)
    if work is None:
        shutil.rmtree(root, ignore_errors=True)
    return report


def _usage(figures: dict[str, Any]) -> str:
    """'W s (user U, sys S; runs [...])' of one variant of a comparison."""
    return (
        f"{figures['wall_s']} s (user {figures['user_s']}, sys {figures['system_s']}; "
        f"runs {figures['walls']})"
    )


def format_report(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table: one row per twoshot variant of each piece of work."""
    from common import markdown_table

    labels = {
        "inference": ("STCN eval_generic.py", "twoshot infer"),
        "cutie": ("Cutie InferenceCore", "twoshot infer"),
        "bank": ("paper: 4 runs + merge", "twoshot pseudo-label"),
    }
    rows = []
    for key, (ref_name, ours_name) in labels.items():
        if key not in report:
            continue
        ref = report[key]["reference"]
        for variant, r in report[key]["variants"].items():
            rows.append(
                [
                    key,
                    f"{ref_name}: {_usage(ref)}",
                    f"{ours_name} {variant}: {_usage(r)}",
                    f"**{r['speedup']}x** ({', '.join(map(str, r['speedups']))}); CPU {r['cpu_speedup']}x",
                    f"{100 * r['agreement']:.4f}% of {r['masks_compared']} masks",
                ]
            )
    table = markdown_table(["work", "reference", "twoshot", "speed-up (per round)", "pixels agreeing"], rows)
    return (
        f"{table}\n\nmachine: {json.dumps(report['machine'])}\nenv: {json.dumps(report['env'])}, "
        f"OMP_NUM_THREADS {report['threads']}, 1-minute load at the end {report['load_average_end']}\n"
        f"data: {json.dumps(report['data'])}"
    )


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``NAME=VALUE`` strings as a dict; SystemExit naming ``option`` for one without ``=``."""
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"{option} {value!r}: expected NAME=VALUE")
        pairs[name] = rest
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; see the module docstring."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-reference"]:
        checkout, script, rest = Path(args[1]), args[2], args[4:]
        run_reference_script(checkout, script, rest)
        return
    if args[:1] == ["--run-cutie-reference"]:
        from cutie_reference import segment_folders

        checkout, model, weights, data, out = args[1:6]
        segment_folders(Path(checkout), model, Path(weights), Path(data), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stcn", type=Path, help="checkout of hkchengrex/STCN (inference)")
    parser.add_argument("--seed-repo", type=Path, help="checkout of the two-shot paper's code (bank)")
    parser.add_argument("--cutie", type=Path, help="checkout of hkchengrex/Cutie (Cutie inference)")
    parser.add_argument("--cutie-model", choices=("small", "base"), default="small")
    parser.add_argument("--weights", type=Path, help="STCN-format weights (default: random)")
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("inference", "bank", "cutie"), help="one piece of work only")
    parser.add_argument(
        "--work", type=Path, help="keep the data and outputs here (default: a temporary folder)"
    )
    parser.add_argument("--twoshot-args", default="", help="extra options for twoshot, e.g. '--exact'")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME=OPTIONS",
        help="twoshot infer variants timed in the same rounds, e.g. default= ort='--runtime onnxruntime'",
    )
    parser.add_argument(
        "--env", nargs="+", default=[], metavar="KEY=VALUE", help="environment of every process"
    )
    parser.add_argument("--json", help="also write the figures here")
    opts = parser.parse_args(args)
    if opts.frames <= max(LABELED):
        parser.error(f"--frames must exceed the last labeled frame ({max(LABELED)})")
    variants = None
    if opts.variants:
        variants = {name: value.split() for name, value in _pairs(opts.variants, "--variants").items()}
    report = run(
        opts.stcn if opts.only in (None, "inference") else None,
        opts.seed_repo if opts.only in (None, "bank") else None,
        cutie=opts.cutie if opts.only in (None, "cutie") else None,
        cutie_model=opts.cutie_model,
        videos=opts.videos,
        frames=opts.frames,
        size=tuple(opts.size),
        objects=opts.objects,
        rounds=opts.rounds,
        weights=opts.weights,
        twoshot_args=opts.twoshot_args.split(),
        variants=variants,
        extra_env=_pairs(opts.env, "--env"),
        work=opts.work,
    )
    from common import print_report

    print_report(format_report(report), report, opts.json)


if __name__ == "__main__":
    main()
