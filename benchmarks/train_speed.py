"""Training speed: optimisation steps per second, data-loader clips per second, GPU use.

- step: one full training iteration (clip forward of 3 frames, the model kind's loss and
  optimiser from :mod:`twoshot.train.objectives` -- STCN: bootstrapped CE, Adam; Cutie: point
  CE + dice with aux terms, AdamW --, backward, step) on an in-memory batch, so the figure is
  the model's alone. CPU: each of ``--cpu-presets`` (default ``tiny``; e.g.
  ``tiny,cutie-tiny``), batch 4 x 3 frames at 96x96, fp32. CUDA (if present): ``stcn``
  preset, batch 8 x 3 frames at 384x384 with AMP, and the GPU utilisation sampled with
  nvidia-smi while it runs.
- loader: clips per second from ``VOSClipDataset`` (sampling full, STCN augmentation) through the
  trainer's batch stream, on a generated DAVIS-layout folder of 480x854 JPEG videos, with 0
  and N DataLoader workers.
- trainer: iterations per second of :class:`twoshot.train.trainer.Trainer` end to end (data,
  step, logging) on the same folder.

    python benchmarks/train_speed.py                   # CPU figures (+ CUDA when available)
    python benchmarks/train_speed.py --cpu-presets tiny,cutie-tiny --loader-batches 0
    python benchmarks/train_speed.py --device cuda --cuda-batch 8

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common import cpu_name
from twoshot.config import load_config
from twoshot.data.batch import ClipBatch
from twoshot.model import build_model
from twoshot.train.forward import ClipModel, forward_batch
from twoshot.train.objectives import objective_for


def synthetic_batch(batch: int, frames: int, size: int, device: torch.device) -> ClipBatch:
    """A training batch of random frames with a target and a second object."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randn(batch, frames, 3, size, size, generator=generator)
    cls = torch.zeros(batch, frames, size, size, dtype=torch.int64)
    cls[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    cls[:, :, -size // 4 :, : size // 4] = 2
    return ClipBatch(
        rgb=rgb,
        first_masks=torch.stack([cls[:, 0] == 1, cls[:, 0] == 2], dim=1).float(),
        cls_gt=cls,
        selector=torch.ones(batch, 2),
        labeled=torch.ones(batch, frames, dtype=torch.bool),
        names=tuple(f"clip{b}" for b in range(batch)),
        frames=torch.arange(frames).repeat(batch, 1),
    ).to(device)


def training_step(
    preset: str, batch: int, frames: int, size: int, device: torch.device, amp: bool
) -> Callable[[], None]:
    """One training iteration of a fresh ``preset`` model on an in-memory batch, as a callable:
    clip forward (autocast when ``amp``), the model kind's loss, backward through the grad
    scaler, its optimiser's step; CUDA synchronised at its end."""
    config = load_config(preset)
    torch.manual_seed(0)
    model = build_model(config.model).to(device).eval()
    objective = objective_for(model.kind, config.main)
    objective.configure(model)
    optimizer = objective.optimizer(model, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    data = synthetic_batch(batch, frames, size, device)
    clip_model = ClipModel(model)  # the trainer's forward: with the loss's aux outputs

    def step() -> None:
        with torch.autocast(device.type, enabled=amp):
            output = forward_batch(clip_model, data)
        loss = objective.loss(output, data, 30_000)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.total).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def time_steps(
    preset: str,
    batch: int,
    frames: int,
    size: int,
    device: torch.device,
    amp: bool,
    steps: int,
    warmup: int = 3,
) -> dict[str, float]:
    """Time ``steps`` training iterations of a fresh :func:`training_step` after ``warmup``
    (see :func:`time_calls`)."""
    return time_calls(training_step(preset, batch, frames, size, device, amp), steps, device, warmup)


def time_calls(
    step: Callable[[], None], steps: int, device: torch.device, warmup: int = 3
) -> dict[str, float]:
    """Time ``steps`` calls of ``step`` (e.g. :func:`training_step`) after ``warmup`` calls.
    Returns it/s and step times (s), and on CUDA the peak memory (GiB)."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    result = {
        "it_per_s": len(times) / sum(times),
        "step_median_s": times[len(times) // 2],
        "step_min_s": times[0],
        "step_max_s": times[-1],
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


class GpuSampler:
    """Samples ``nvidia-smi`` GPU utilisation (%) every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float | None:
        """Mean utilisation, None without samples."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def make_videos(root: Path, videos: int, frames: int, size: tuple[int, int]) -> Path:
    """A DAVIS-layout folder of generated videos; returns its root."""
    from twoshot.data.fixtures import make_davis

    names = {f"video{i:02d}": frames for i in range(videos)}
    return make_davis(root, names, size=size).root


def time_loader(root: Path, crop: int, batch: int, workers: int, batches: int) -> float:
    """Clips per second from VOSClipDataset through the trainer's ClipStream."""
    from twoshot.data.readers import open_dataset
    from twoshot.data.vos_clips import VOSClipDataset
    from twoshot.train.loader import ClipStream

    dataset = VOSClipDataset(open_dataset("davis", root, "train"), crop, sampling="full", repeats=8)
    stream = ClipStream(batch, workers, seed=0, rank=0, world=1, skip_at=lambda it: 10)
    stream.next_batch(dataset, 0)  # start the workers
    start = time.perf_counter()
    for it in range(1, batches + 1):
        stream.next_batch(dataset, it)
    elapsed = time.perf_counter() - start
    stream.close()
    return batches * batch / elapsed


def time_trainer(
    root: Path,
    iterations: int,
    workers: int,
    out: Path,
    preset: str = "tiny",
    batch: int = 4,
    crop: int = 96,
    device: str = "cpu",
    amp: bool = False,
) -> float:
    """Iterations per second of the whole Trainer (data, step, logging) from the end of its
    3rd iteration to the end of its last (the first ones start the loader workers and the
    kernels).

    root: a DAVIS-layout folder (:func:`make_videos`); preset / batch / crop / workers / amp:
    the run's settings (defaults: tiny, batch 4, 96 px, fp32, on the CPU); out: a new folder.
    """
    from twoshot.train.recipes import build_stage_dataset
    from twoshot.train.trainer import Trainer

    config = load_config(
        preset,
        overrides=[
            f"main.iterations={iterations}",
            "main.lr_steps=[]",  # a speed run: the preset's steps lie past its few iterations
            f"main.batch_size={batch}",
            f"main.crop_size={crop}",
            f"main.num_workers={workers}",
            f"main.amp={str(amp).lower()}",
            "main.log_every=1000000",
            "main.image_every=1000000",
            "main.save_every=1000000",
        ],
    )
    dataset = build_stage_dataset("main", config, root, "davis", "train")
    trainer = Trainer(config, "main", dataset, out, device=device, progress=False)
    times: list[float] = []
    original = trainer.regime.after_step

    def after_step(model: torch.nn.Module, it: int) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter())
        original(model, it)

    trainer.regime.after_step = after_step  # type: ignore[method-assign]
    try:
        trainer.run()
    finally:
        trainer.close()
    return (len(times) - 3) / (times[-1] - times[2])


def run(
    cpu_steps: int = 20,
    cuda_steps: int = 20,
    cuda_batch: int = 8,
    loader_batches: int = 10,
    workers: int = 2,
    trainer_iterations: int = 20,
    device: str = "auto",
    videos: int = 4,
    frames: int = 20,
    cpu_presets: tuple[str, ...] = ("tiny",),
) -> dict[str, Any]:
    """All measurements as a dict (see the module docstring)."""
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    cpu = torch.device("cpu")
    for preset in cpu_presets:
        result[f"cpu_step_{preset}_b4_t3_96px"] = time_steps(
            preset, 4, 3, 96, cpu, amp=False, steps=cpu_steps
        )
    if loader_batches <= 0:  # model figures only
        return result
    with tempfile.TemporaryDirectory() as tmp:
        root = make_videos(Path(tmp) / "davis", videos, frames, (480, 854))
        result["loader_clips_per_s_384px"] = {
            f"workers_{n}": time_loader(root, 384, 4, n, loader_batches) for n in sorted({0, workers})
        }
        result["loader_clips_per_s_96px"] = {
            f"workers_{n}": time_loader(root, 96, 4, n, loader_batches) for n in sorted({0, workers})
        }
        result["cpu_trainer_it_per_s_tiny_b4_96px"] = time_trainer(
            root, trainer_iterations, workers, Path(tmp) / "run"
        )
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        gpu = torch.device("cuda")
        with GpuSampler() as sampler:
            stcn = time_steps("stcn", cuda_batch, 3, 384, gpu, amp=True, steps=cuda_steps)
        stcn["gpu_utilisation_percent"] = sampler.mean()
        stcn["gpu"] = torch.cuda.get_device_name(gpu)
        result[f"cuda_step_stcn_b{cuda_batch}_t3_384px_amp"] = stcn
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-steps", type=int, default=20)
    parser.add_argument("--cuda-steps", type=int, default=20)
    parser.add_argument("--cuda-batch", type=int, default=8)
    parser.add_argument("--loader-batches", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trainer-iterations", type=int, default=20)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--cpu-presets",
        default="tiny",
        help="comma-separated presets timed on the CPU (e.g. tiny,cutie-tiny)",
    )
    args = parser.parse_args()
    result = run(
        args.cpu_steps,
        args.cuda_steps,
        args.cuda_batch,
        args.loader_batches,
        args.workers,
        args.trainer_iterations,
        args.device,
        cpu_presets=tuple(p for p in args.cpu_presets.split(",") if p),
    )
    print(json.dumps(result, indent=2))
    for key, value in result.items():
        if key.startswith("cpu_step_"):
            step = value["step_median_s"]
            print(
                f"{key}: median {step:.3f} s per step ({value['it_per_s']:.2f} it/s; "
                f"{'<' if step < 0.5 else '>='} 0.5 s)"
            )


if __name__ == "__main__":
    main()
