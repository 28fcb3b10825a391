"""Speed of ``twoshot.evaluate`` against a straightforward per-frame, per-object evaluator.

Generates a few 480p videos of moving objects (ground truth in a DAVIS root, predictions
with shifted, noisy boundaries, a lost object now and then and a spurious label), then
times in the same run:

- straightforward: what davis2017-evaluation does, one frame and one object at a time on
  full frames (seg2bmap, two ``cv2.dilate`` with the disk, counts), one process;
- fast, 1 process and N processes: :func:`twoshot.evaluate.evaluate_folders`;
- in memory (no PNG reading): the straightforward loop vs
  :func:`twoshot.evaluate.evaluate_sequence`.

It asserts that every per-frame J and F is identical, then prints the timings and ratios.
The variants take turns (``--repeat`` rounds, the order reversed every other round, best
round reported), so a change in the machine's load hits them alike.

    python benchmarks/eval_speed.py --videos 6 --frames 40 --objects 3 --workers 2

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from common import cpu_name, interleave, load_average
from twoshot.data.masks import read_mask, write_mask
from twoshot.evaluate import EvalResult, evaluate_folders, evaluate_sequence

# ---------------------------------------------------------------- straightforward reference


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """davis2017's boundary map of one bool [H, W] mask, on the full frame."""
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Boundary F of two bool [H, W] masks: full-frame maps, two full-frame dilations."""
    radius = np.ceil(0.008 * np.linalg.norm(pred.shape))
    offsets = np.arange(-radius, radius + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    fg_b = _seg2bmap(pred)
    gt_b = _seg2bmap(gt)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), disk)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk)
    n_fg = np.sum(fg_b)
    n_gt = np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_b * gt_dil) / float(n_fg)
        recall = np.sum(gt_b * fg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def straightforward_sequence(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F [objects, T-2] of label stacks [T, H, W], one frame/object at a time."""
    num_objects = int(np.max(np.where(gt[0] == 255, 0, gt[0])))
    frames = range(1, len(gt) - 1)
    j = np.zeros((num_objects, len(frames)))
    f = np.zeros((num_objects, len(frames)))
    for obj in range(1, num_objects + 1):
        for column, t in enumerate(frames):
            p = pred[t] == obj
            g = gt[t] == obj
            union = np.sum(p | g)
            j[obj - 1, column] = 1.0 if union == 0 else np.sum(p & g) / union
            f[obj - 1, column] = _f_measure(p, g)
    return j, f


def straightforward_folders(
    pred_dir: Path, gt_dir: Path, videos: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every video's PNGs into stacks (like davis2017-evaluation), then score them."""
    out = {}
    for video in videos:
        gt_paths = sorted((gt_dir / video).glob("*.png"))
        gt = np.stack([read_mask(p)[0] for p in gt_paths])
        pred = np.stack([read_mask(pred_dir / video / p.name)[0] for p in gt_paths])
        out[video] = straightforward_sequence(pred, gt)
    return out


# ---------------------------------------------------------------- generated data


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), (max(int(rx), 1), max(int(ry), 1)), angle, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def make_dataset(
    root: Path, videos: int, frames: int, objects: int, size: tuple[int, int] = (480, 854), seed: int = 0
) -> tuple[Path, Path]:
    """Write a DAVIS root ``root/gt`` and predictions ``root/pred``. Returns (gt_dir, pred_dir).

    Each video has ``objects`` ellipses (radii 25-110 px) drifting across the frame and
    occluding one another; the prediction shifts each object by a few pixels, roughens its
    boundary, loses it on ~5% of frames and adds a small spurious label on some frames.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    gt_root = root / "gt"
    pred_root = root / "pred"
    names = [f"video{v:02d}" for v in range(videos)]
    for name in names:
        start = rng.uniform((60, 80), (height - 60, width - 80), size=(objects, 2))
        velocity = rng.uniform(-4, 4, size=(objects, 2))
        radii = rng.uniform(25, 110, size=(objects, 2))
        angles = rng.uniform(0, 180, size=objects)
        for t in range(frames):
            gt = np.zeros(size, np.uint8)
            pred = np.zeros(size, np.uint8)
            for obj in range(objects):
                cy, cx = start[obj] + velocity[obj] * t
                ry, rx = radii[obj] * (1 + 0.1 * np.sin(t / 7 + obj))
                gt[_ellipse(size, cy, cx, ry, rx, angles[obj] + t)] = obj + 1
                if t > 0 and rng.random() < 0.05:
                    continue  # the prediction lost this object in this frame
                dy, dx = rng.normal(0, 3, size=2)
                shape = _ellipse(
                    size,
                    cy + dy,
                    cx + dx,
                    ry * rng.uniform(0.9, 1.1),
                    rx * rng.uniform(0.9, 1.1),
                    angles[obj] + t,
                )
                # Ragged boundary: flip a random band of pixels around the edge.
                edge = cv2.morphologyEx(
                    shape.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)
                ).astype(bool)
                shape ^= edge & (rng.random(size) < 0.3)
                pred[shape] = obj + 1
            if t > 0 and rng.random() < 0.2:
                y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
                pred[y : y + 20, x : x + 20] = objects + 1  # an object the GT does not have
            write_mask(gt_root / "Annotations" / "480p" / name / f"{t:05d}.png", gt)
            write_mask(pred_root / name / f"{t:05d}.png", pred)
    (gt_root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (gt_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return gt_root, pred_root


# ---------------------------------------------------------------- timing


def _check_equal(reference: dict[str, tuple[np.ndarray, np.ndarray]], result: EvalResult, what: str) -> None:
    for seq in result.sequences:
        j, f = reference[seq.name]
        if not (np.array_equal(j, seq.j) and np.array_equal(f, seq.f)):
            raise AssertionError(
                f"{what}: per-frame J/F of {seq.name} differ from the straightforward evaluator"
            )


def run(
    videos: int = 6,
    frames: int = 40,
    objects: int = 3,
    workers: int = 2,
    size: tuple[int, int] = (480, 854),
    repeat: int = 1,
    seed: int = 0,
    workdir: str | os.PathLike[str] | None = None,
) -> dict:
    """Generate data, time the evaluators, check they agree exactly. Returns the figures.

    Keys: seconds per variant (``straightforward_s``, ``fast_1proc_s``, ``fast_Nproc_s``,
    ``memory_straightforward_s``, ``memory_fast_s``), speed-ups (``speedup_1proc``,
    ``speedup_Nproc``, ``speedup_memory``), the J&F-Mean, and the setup.
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        gt_root, pred_root = make_dataset(Path(tmp), videos, frames, objects, size, seed)
        names = [f"video{v:02d}" for v in range(videos)]
        annotations = gt_root / "Annotations" / "480p"

        folders = interleave(
            {
                "slow": lambda: straightforward_folders(pred_root, annotations, names),
                "fast1": lambda: evaluate_folders(pred_root, gt_root),
                "fastn": lambda: evaluate_folders(pred_root, gt_root, workers=workers),
            },
            repeat,
        )
        slow_s, slow_cpu = folders.best("slow"), folders.best_cpu("slow")
        fast1_s, fast1_cpu = folders.best("fast1"), folders.best_cpu("fast1")
        fastn_s, fastn_cpu = folders.best("fastn"), folders.best_cpu("fastn")
        reference, fast1, fastn = (folders.values[k] for k in ("slow", "fast1", "fastn"))
        _check_equal(reference, fast1, "1 process")
        _check_equal(reference, fastn, f"{workers} processes")

        # Compute only: the same stacks in memory for both.
        stacks = []
        for name in names:
            paths = sorted((annotations / name).glob("*.png"))
            stacks.append(
                (
                    np.stack([read_mask(p)[0] for p in paths]),
                    np.stack([read_mask(pred_root / name / p.name)[0] for p in paths]),
                )
            )
        memory = interleave(
            {
                "slow": lambda: [straightforward_sequence(p, g) for g, p in stacks],
                "fast": lambda: [evaluate_sequence(p, g, name=n) for (g, p), n in zip(stacks, names)],
            },
            repeat,
        )
        mem_slow_s, mem_fast_s = memory.best("slow"), memory.best("fast")
        _check_equal(reference, EvalResult.from_sequences(memory.values["fast"]), "in memory")
        load = load_average()

    scored = videos * (frames - 2) * objects
    return {
        "videos": videos,
        "frames": frames,
        "objects": objects,
        "size": list(size),
        "workers": workers,
        "object_frames": scored,
        "cpus": os.cpu_count(),
        "machine": cpu_name(),
        "load_average_1min": load,
        "straightforward_s": slow_s,
        "fast_1proc_s": fast1_s,
        "fast_Nproc_s": fastn_s,
        "straightforward_cpu_s": slow_cpu,
        "fast_1proc_cpu_s": fast1_cpu,
        "fast_Nproc_cpu_s": fastn_cpu,
        "memory_straightforward_s": mem_slow_s,
        "memory_fast_s": mem_fast_s,
        "speedup_1proc": slow_s / fast1_s,
        "speedup_Nproc": slow_s / fastn_s,
        "speedup_memory": mem_slow_s / mem_fast_s,
        "j_and_f_mean": fast1.j_and_f,
    }


def main() -> None:
    """Command line: print the figures as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="best of N timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = run(args.videos, args.frames, args.objects, args.workers, repeat=args.repeat, seed=args.seed)
    print(
        f"{out['videos']} videos x {out['frames']} frames x {out['objects']} objects at "
        f"{out['size'][1]}x{out['size'][0]} ({out['object_frames']} object-frames scored), "
        f"{out['cpus']} CPUs; all per-frame J/F identical"
    )
    print(f"{'':32} {'wall':>7}   {'speed-up':>8}   {'CPU':>7}")
    print(
        f"{'straightforward, 1 process':32} {out['straightforward_s']:7.2f} s {'':10} "
        f"{out['straightforward_cpu_s']:7.2f} s"
    )
    print(
        f"{'twoshot.evaluate, 1 process':32} {out['fast_1proc_s']:7.2f} s   "
        f"x{out['speedup_1proc']:<7.1f}   {out['fast_1proc_cpu_s']:7.2f} s"
    )
    label = f"twoshot.evaluate, {out['workers']} processes"
    print(
        f"{label:32} "
        f"{out['fast_Nproc_s']:7.2f} s   x{out['speedup_Nproc']:<7.1f}   "
        f"{out['fast_Nproc_cpu_s']:7.2f} s"
    )
    print(
        f"in memory (no PNG reading): straightforward {out['memory_straightforward_s']:.2f} s, "
        f"evaluate_sequence {out['memory_fast_s']:.2f} s   x{out['speedup_memory']:.1f}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
