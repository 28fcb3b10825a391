"""Long videos: memory with and without ``InferenceConfig.max_memory_frames``, and what the cap
costs in J&F.

**Memory.** A generated 480x854 video (textured background under a panning camera, two
ellipses on Lissajous paths) of ``--frames`` frames, rendered one frame at a time when the
engine asks for it (never held whole), is propagated forward from frame 0 with the ``tiny``
preset (random weights: memory and speed do not depend on them) at shorter side 480, memory
every 5 frames, top-k 20. Each configuration runs in a fresh child process, one after the
other, so that its peak resident set is its own, with the allocator settings of the
``twoshot`` command line (``twoshot.allocator``: freed memory kept in the process):

- ``cap``: ``max_memory_frames = --cap`` (default 10), masks taken frame by frame from
  ``PropagationEngine.frames`` and dropped (what ``predict_sequences`` does, writing them);
- ``unbounded``: no cap, streamed;
- ``cap_in_memory``: the cap, masks kept as a [T, H, W] array (the in-memory path).

For each: the process's RSS (``VmRSS`` in ``/proc/self/status``) and peak RSS so far
(``VmHWM``: it includes the transient affinity matrices of memory reads, which the samples
between frames miss) sampled as frames finish, the growth of both over the second half of
the video, and frames/s over the first and the last quarter.

**Accuracy.** Generated videos with ground truth (``twoshot.data.synth_render.make_video``,
default difficulty, ``--jf-frames`` frames at 96x96, 2 objects) are propagated from frame 0
with no cap and with each of ``--jf-caps``, scored with ``twoshot.evaluate.evaluate_sequence``.
Random weights would make J&F meaningless, so the model is ``--checkpoint`` (a ``tiny``
checkpoint) or else ``tiny`` trained here from scratch for ``--train-iterations`` on 16
generated 24-frame videos at 96x96 (``--save-checkpoint`` keeps it for the next run).

    python benchmarks/long_video.py                               # 200 frames; ~5 min on 2 quiet cores
    python benchmarks/long_video.py --frames 60 --jf-frames 120 --train-iterations 100   # quick
    python benchmarks/long_video.py --frames 2000 --configs cap --skip-accuracy         # 2 000 frames, capped
    python benchmarks/long_video.py --model sam2-toy --frames 2000 --given-every 100 --cap 8 --configs cap \
        --skip-accuracy                                                               # SAM 2, 2 000 frames

**SAM 2** (``--model sam2-toy``, random weights whose object-score head sees the objects):
the preset's own inference settings (bfloat16 autocast, 128-pixel input), ``--cap`` is
``max_memory_frames`` (SAM 2: its 6 previous frames plus the ``cap - 6`` given frames
nearest in time; at least 8), ``--given-every K`` gives the objects' masks on every K-th
frame as well (so that the given frames, the only part of SAM 2's memory that can grow,
do), ``--offload`` keeps features and memories in CPU memory (a no-op on a CPU). The
accuracy part is STCN's only.

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from common import machine_info, markdown_table, peak_rss_mb, print_report, rss_mb
from twoshot.config import InferenceConfig, load_config
from twoshot.inference import PropagationEngine
from twoshot.inference.key_cache import FramesOnDemand
from twoshot.model import STCN, build_model

CONFIGS: tuple[str, ...] = ("cap", "unbounded", "cap_in_memory")


class LongVideo(FramesOnDemand):
    """A generated video whose frames are rendered on demand: ``video[t]`` -> uint8 [H, W, 3].

    A smooth random texture twice the frame's width pans by 2 px per frame (wrapping), and
    ``objects`` flat-coloured ellipses move on Lissajous paths over it. :meth:`labels` gives
    the uint8 [H, W] object ids (1..objects) of a frame. Deterministic in ``seed``; costs a
    few milliseconds per 480p frame and no memory per frame.
    """

    def __init__(
        self, num_frames: int, size: tuple[int, int] = (480, 854), objects: int = 2, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        self.num_frames = num_frames
        self.height, self.width = size
        coarse = rng.integers(30, 140, (self.height // 8 + 1, self.width // 4 + 1, 3), dtype=np.uint8)
        texture = cv2.resize(coarse, (2 * self.width, self.height), interpolation=cv2.INTER_LINEAR)
        self.texture = np.concatenate([texture, texture], axis=1)  # room to pan and wrap
        self.paths = rng.uniform(0.0, 1.0, (objects, 5))  # amplitudes, speeds, phase
        self.radii = rng.uniform(0.08, 0.16, (objects, 2)) * min(size)
        self.colors = rng.integers(150, 256, (objects, 3))

    def __len__(self) -> int:
        return self.num_frames

    def _ellipses(self, t: int) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
        """(centre (x, y), axes, angle) of each object on frame t."""
        out = []
        for (ax, ay, fx, fy, phase), (rx, ry) in zip(self.paths, self.radii):
            cx = self.width * (0.5 + 0.3 * (0.5 + ax / 2) * np.sin(0.01 + 0.03 * fx * t + 6 * phase))
            cy = self.height * (0.5 + 0.3 * (0.5 + ay / 2) * np.sin(0.02 * (1 + fy) * t + 3 * phase))
            out.append(((int(cx), int(cy)), (int(rx), int(ry)), float((t * 2) % 360)))
        return out

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` rendered now (uint8 [H, W, 3])."""
        x0 = (2 * index) % (2 * self.width)
        image = np.ascontiguousarray(self.texture[:, x0 : x0 + self.width])
        for (centre, axes, angle), color in zip(self._ellipses(index), self.colors):
            cv2.ellipse(image, centre, axes, angle, 0, 360, tuple(int(c) for c in color), -1)
        return image

    def labels(self, t: int) -> np.ndarray:
        """Object ids of frame t, uint8 [H, W]."""
        labels = np.zeros((self.height, self.width), np.uint8)
        for obj, (centre, axes, angle) in enumerate(self._ellipses(t), start=1):
            cv2.ellipse(labels, centre, axes, angle, 0, 360, obj, -1)
        return labels


# ------------------------------------------------------------------------------- memory part


def measure_memory(
    config_name: str,
    frames: int,
    cap: int,
    size: tuple[int, int] = (480, 854),
    samples: int = 20,
    seed: int = 0,
    model_name: str = "tiny",
    given_every: int | None = None,
    offload: bool = False,
) -> dict[str, Any]:
    """One configuration, in this process (call it in a fresh one: the peak RSS is per process).

    Returns samples [(frame, RSS MiB, peak RSS so far MiB)], peak RSS, the growth of RSS and
    of the peak over the second half, frames/s of the first and last quarter, and the
    engine's work counts.
    """
    video = LongVideo(frames, size, seed=seed)
    torch.manual_seed(seed)
    preset = load_config(model_name)
    model = build_model(preset.model).eval()
    cap_value = None if config_name == "unbounded" else cap
    if preset.model.kind == "sam2":
        with torch.no_grad():  # random weights that see the objects: the masks are not empty
            model.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
        settings = dataclasses.replace(preset.inference, device="cpu", max_memory_frames=cap_value)
    else:
        settings = InferenceConfig(size=480, device="cpu", max_memory_frames=cap_value)
    engine = PropagationEngine(model, dataclasses.replace(settings, offload=offload))
    engine.propagate(video[:2], {0: video.labels(0)})  # warm-up
    given = {t: video.labels(t) for t in range(0, frames, given_every or frames)}
    start_rss = rss_mb()
    every = max(1, frames // samples)
    rss: list[tuple[int, float, float]] = []
    stamps: list[float] = []

    def progress(frame: int) -> None:
        stamps.append(time.perf_counter())
        if frame % every == 0 or frame == frames - 1:
            rss.append((frame, round(rss_mb() or 0.0, 1), round(peak_rss_mb(), 1)))

    start = time.perf_counter()
    streamed = config_name != "cap_in_memory"
    if streamed:
        propagation = engine.frames(video, given)
        for out in propagation:
            progress(out.frame)  # a real caller writes the PNG here (predict_sequences does)
        stats = propagation.stats
    else:
        stats = engine.propagate(video, given, progress=progress).stats
    seconds = time.perf_counter() - start
    quarter = max(1, len(stamps) // 4)
    half = [(mb, peak) for frame, mb, peak in rss if frame >= frames // 2]
    return {
        "config": config_name,
        "model": model_name,
        "given_frames": len(given),
        "offload": offload,
        "frames": frames,
        "max_memory_frames": cap_value,
        "streamed": streamed,
        "seconds": round(seconds, 1),
        "frames_per_second": round(frames / seconds, 2),
        "fps_first_quarter": round(quarter / (stamps[quarter - 1] - start), 2),
        "fps_last_quarter": round(quarter / (stamps[-1] - stamps[-quarter - 1]), 2)
        if len(stamps) > quarter
        else None,
        "rss_start_mb": start_rss,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_growth_second_half_mb": round(half[-1][0] - half[0][0], 1) if len(half) > 1 else None,
        "peak_growth_second_half_mb": round(half[-1][1] - half[0][1], 1) if len(half) > 1 else None,
        "rss_samples": rss,
        "peak_memory_frames": stats.peak_memory_frames,
        "peak_cached_frames": stats.peak_cached_frames,
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure_memory` in a fresh Python process; returns its report."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['config_name']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- accuracy part


def train_tiny(workdir: Path, iterations: int, seed: int = 0) -> Path:
    """Train ``tiny`` from scratch on 16 generated 24-frame 96x96 videos; returns final.pth."""
    from twoshot.data.synth import generate_dataset
    from twoshot.train.recipes import build_stage_dataset
    from twoshot.train.trainer import train

    data = workdir / "synth"
    generate_dataset(
        data, videos=16, frames=24, size=(96, 96), objects=(1, 3), seed=seed, val_videos=0, static_images=0
    )
    config = load_config(
        "tiny",
        overrides=[
            f"main.iterations={iterations}",
            "main.lr_steps=[]",  # no decay within these few hundred iterations (the preset's is at 650)
            "main.num_workers=0",
            "main.save_every=1000000",
            "main.log_every=1000000",
            "main.image_every=1000000",
        ],
    )
    dataset = build_stage_dataset("main", config, data, "davis", "train")
    return train(config, "main", dataset, workdir / "train", device="cpu", progress=False)


def measure_accuracy(
    model: STCN,
    caps: Sequence[int],
    videos: int = 3,
    frames: int = 400,
    size: tuple[int, int] = (96, 96),
    objects: int = 2,
    seed: int = 1,
) -> dict[str, Any]:
    """J&F of forward propagation from frame 0 with no cap and each cap, on generated videos.

    Returns {"J&F": {setting: value}, "delta": {setting: J&F - unbounded J&F}, per-video
    figures and the peak memory frames of each setting}.
    """
    from twoshot.data.synth_config import SynthConfig
    from twoshot.data.synth_render import make_video
    from twoshot.evaluate import EvalResult, evaluate_sequence

    settings: list[int | None] = [None, *caps]
    scores: dict[str, list[Any]] = {_label(c): [] for c in settings}
    memory: dict[str, int] = {}
    base = InferenceConfig(size=-1, device="cpu", mem_every=5, top_k=20)
    for v in range(videos):
        rng = np.random.default_rng([seed, v])
        clip = make_video(rng, frames, size[0], size[1], objects, SynthConfig())
        for cap in settings:
            engine = PropagationEngine(model, dataclasses.replace(base, max_memory_frames=cap))
            result = engine.propagate(clip.frames, {0: clip.labels[0]})
            scores[_label(cap)].append(evaluate_sequence(result.masks, clip.labels, name=f"long{v}"))
            memory[_label(cap)] = max(memory.get(_label(cap), 0), result.stats.peak_memory_frames)
    jf = {name: EvalResult.from_sequences(seqs).j_and_f for name, seqs in scores.items()}
    return {
        "videos": videos,
        "frames": frames,
        "size": list(size),
        "objects": objects,
        "J&F": {k: round(v, 4) for k, v in jf.items()},
        "delta": {k: round(v - jf["unbounded"], 4) for k, v in jf.items()},
        "per_video_J&F": {
            k: [round(float(s.j.mean() + s.f.mean()) / 2, 4) for s in seqs] for k, seqs in scores.items()
        },
        "peak_memory_frames": memory,
    }


def _label(cap: int | None) -> str:
    return "unbounded" if cap is None else f"cap {cap}"


# ----------------------------------------------------------------------------------- runner


def run(
    frames: int = 200,
    cap: int = 10,
    configs: Sequence[str] = CONFIGS,
    accuracy: bool = True,
    checkpoint: str | None = None,
    save_checkpoint: str | None = None,
    train_iterations: int = 300,
    jf_frames: int = 400,
    jf_videos: int = 3,
    jf_caps: Sequence[int] = (2, 5, 10),
    threads: int | None = None,
    seed: int = 0,
    model_name: str = "tiny",
    given_every: int | None = None,
    offload: bool = False,
) -> dict:
    """Both parts (see the module docstring). Returns {"machine", "memory": {config: report},
    "accuracy": {...} or None, "model": how the accuracy model was obtained}."""
    threads = threads or torch.get_num_threads()
    memory = {
        name: _child(
            {
                "config_name": name,
                "frames": frames,
                "cap": cap,
                "seed": seed,
                "threads": threads,
                "model_name": model_name,
                "given_every": given_every,
                "offload": offload,
            }
        )
        for name in configs
    }
    report: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "memory": memory,
        "accuracy": None,
        "model": None,
    }
    if not accuracy or model_name != "tiny":
        return report
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            path = train_tiny(Path(tmp), train_iterations, seed)
            report["model"] = (
                f"tiny trained here from scratch: {train_iterations} iterations, "
                "16 generated 24-frame videos at 96x96, "
                f"{time.perf_counter() - start:.0f} s"
            )
            if save_checkpoint:
                Path(save_checkpoint).parent.mkdir(parents=True, exist_ok=True)
                Path(save_checkpoint).write_bytes(path.read_bytes())
        else:
            path = Path(checkpoint)
            report["model"] = f"checkpoint {checkpoint}"
        from twoshot.model.checkpoint import load_model

        model = load_model(path, load_config("tiny").model).eval()
    report["accuracy"] = measure_accuracy(model, jf_caps, jf_videos, jf_frames, seed=seed + 1)
    return report


def format_report(report: dict) -> str:
    """Markdown tables of a :func:`run` report."""
    m = report["machine"]
    lines = [
        f"machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), load average {m['load_average_1min']}",
        "",
    ]
    first = next(iter(report["memory"].values()), {})
    if first.get("model", "tiny") != "tiny":
        lines[-1:-1] = [
            f"model {first['model']}, masks given on {first['given_frames']} frames, "
            f"offload {'on' if first['offload'] else 'off'}"
        ]
    rows = []
    for name, r in report["memory"].items():
        rows.append(
            [
                name,
                r["frames"],
                r["max_memory_frames"] or "-",
                "yes" if r["streamed"] else "no",
                r["peak_memory_frames"],
                r["rss_start_mb"] and round(r["rss_start_mb"]),
                round(r["peak_rss_mb"]),
                r["rss_growth_second_half_mb"],
                r["peak_growth_second_half_mb"],
                r["fps_first_quarter"],
                r["fps_last_quarter"],
            ]
        )
    lines.append(
        markdown_table(
            [
                "config",
                "frames",
                "cap",
                "streamed",
                "memory frames (peak)",
                "RSS at start MiB",
                "peak RSS MiB",
                "RSS growth, 2nd half MiB",
                "peak RSS growth, 2nd half MiB",
                "frames/s 1st quarter",
                "frames/s last quarter",
            ],
            rows,
        )
    )
    for name, r in report["memory"].items():
        lines.append(
            f"samples {name} (frame: RSS/peak MiB): "
            + " ".join(f"{f}:{mb:.0f}/{peak:.0f}" for f, mb, peak in r["rss_samples"])
        )
    acc = report["accuracy"]
    if acc is not None:
        lines += [
            "",
            f"J&F on {acc['videos']} generated videos of {acc['frames']} frames at "
            f"{acc['size'][1]}x{acc['size'][0]}, {acc['objects']} objects; model: "
            f"{report['model']}",
            "",
        ]
        lines.append(
            markdown_table(
                ["memory", "peak memory frames", "J&F", "change vs unbounded", "per video"],
                [
                    [k, acc["peak_memory_frames"][k], v, f"{acc['delta'][k]:+.4f}", acc["per_video_J&F"][k]]
                    for k, v in acc["J&F"].items()
                ],
            )
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the tables; ``--json PATH`` also writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="length of the 480p video")
    parser.add_argument("--cap", type=int, default=10, help="max_memory_frames of the capped runs")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--checkpoint", default=None, help="a trained tiny checkpoint for J&F")
    parser.add_argument("--save-checkpoint", default=None, metavar="PATH", help="keep the model trained here")
    parser.add_argument("--train-iterations", type=int, default=300)
    parser.add_argument("--jf-frames", type=int, default=400)
    parser.add_argument("--jf-videos", type=int, default=3)
    parser.add_argument("--jf-caps", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument(
        "--model", default="tiny", choices=("tiny", "sam2-toy"), help="the memory part's model"
    )
    parser.add_argument(
        "--given-every", type=int, default=None, metavar="K", help="masks on every K-th frame too"
    )
    parser.add_argument("--offload", action="store_true", help="SAM 2: features and memories in CPU memory")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        from twoshot.allocator import keep_freed_memory

        keep_freed_memory()  # as the twoshot command line does, whose memory this measures
        spec = json.loads(args.child)
        torch.set_num_threads(spec.pop("threads"))
        print(json.dumps(measure_memory(**spec)))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(
        args.frames,
        args.cap,
        args.configs,
        not args.skip_accuracy,
        args.checkpoint,
        args.save_checkpoint,
        args.train_iterations,
        args.jf_frames,
        args.jf_videos,
        args.jf_caps,
        args.threads,
        model_name=args.model,
        given_every=args.given_every,
        offload=args.offload,
    )
    print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
