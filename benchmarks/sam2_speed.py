"""SAM 2 speed on a CPU: ``twoshot infer`` against the reference video predictor, whole processes.

For each size (``toy``: twoshot's ``sam2-toy`` at 128 pixels; ``tiny``: sam2.1-tiny at its
1024-pixel input), one generated video (frames at the model's square input, so that neither
side resizes; two objects given on frame 0) is written as JPEGs in the generic layout, and
random weights (seeded; the object-score head's last bias raised so that the objects are
seen) are saved as a checkpoint. Then, in interleaved rounds (``common.interleave``: A B,
B A, ...), each side runs as a fresh Python process, start to exit, imports and model
building included:

- twoshot: ``python -m twoshot infer --checkpoint CKPT --data ROOT --out OUT --device cpu``
  (the preset told from the weights: bfloat16 autocast, hole filling on the CPU);
- reference: this script's ``--child-reference`` mode: ``SAM2VideoPredictor`` of the
  checkout given with ``--reference`` (built as ``benchmarks/sam2_reference.py`` builds it,
  the ``toy`` trunk from the tiny config with twoshot's toy sizes, its hole filling through
  twoshot's CPU stand-in of the compiled extension), ``init_state`` on the JPEG folder,
  ``add_new_mask`` per object on frame 0 (all objects in one state, as the reference's
  users do), ``propagate_in_video``, the objects' logits combined (> 0, highest wins) and
  written as PNGs; under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

``--variants NAME=OPTIONS ...`` times several twoshot variants in the same rounds (extra
``twoshot infer`` options each; default one, ``twoshot=``), e.g. the runtimes against the
float32 torch path they replace::

    --variants torch-fp32='--no-exact --no-amp' \
        onnxruntime='--runtime onnxruntime --no-exact --no-amp' \
        openvino='--runtime openvino --no-exact --no-amp'

Without ``--reference`` only the twoshot variants run, and agreement is measured against
the first of them.

Reported per size: the median wall seconds of each side, frames/s (frames / median wall,
so process start-up counts), the median per-round ratio to the baseline (the reference, or
the first variant), the CPU seconds, and the share of pixels whose labels agree with the
baseline (frame 0 excluded). The CPU's flags and the load average are printed before and
after: bfloat16 without ``avx512_bf16`` / ``amx_bf16`` is emulated.

    python benchmarks/sam2_speed.py [--reference /path/to/sam2] [--sizes toy tiny]
        [--toy-frames 20] [--tiny-frames 4] [--rounds 2] [--threads 1] [--variants ...]

sam2.1-tiny at 1024 takes about 18 s a frame on a 2-core CPU, so its video is short (4
frames by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from common import interleave, machine_info, machine_line, markdown_table

HERE = Path(__file__).resolve()
SIZES: dict[str, dict[str, Any]] = {
    "toy": {"preset": "sam2-toy", "image_size": 128},
    "tiny": {"image_size": 1024},
}


def make_video(root: Path, frames: int, image_size: int, seed: int = 0) -> None:
    """``root/JPEGImages/v/*.jpg`` and ``root/Annotations/v/00000.png`` (two objects)."""
    from twoshot.data.fixtures import random_video
    from twoshot.data.masks import DAVIS_PALETTE, write_mask

    rgb, labels = random_video(frames, (image_size, image_size), object_ids=(1, 2), seed=seed)
    images = root / "JPEGImages" / "v"
    images.mkdir(parents=True)
    from PIL import Image

    for index, frame in enumerate(rgb):
        Image.fromarray(frame).save(images / f"{index:05d}.jpg", quality=95)
    (root / "Annotations" / "v").mkdir(parents=True)
    write_mask(root / "Annotations" / "v" / "00000.png", labels[0], DAVIS_PALETTE)


def make_weights(size: str, path: Path, seed: int = 0) -> None:
    """Seeded random weights of ``size`` whose object-score head sees the objects."""
    import torch

    from twoshot.model import save_weights
    from twoshot.model.sam2 import SIZES as SAM2_SIZES
    from twoshot.model.sam2 import Sam2

    torch.manual_seed(seed)
    model = Sam2(SAM2_SIZES[size])
    with torch.no_grad():
        model.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    save_weights(model, path)


def child_reference(spec: dict[str, Any]) -> None:
    """The reference side, in this process: see the module docstring."""
    import torch

    from sam2_reference import build_reference, import_reference
    from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask

    torch.set_num_threads(spec["threads"])
    reference = Path(spec["reference"])
    import_reference(reference, fill_holes=True)
    state = torch.load(spec["weights"], map_location="cpu", weights_only=True)
    predictor = build_reference(reference, spec["size"], spec["image_size"], state)
    root, out = Path(spec["root"]), Path(spec["out"])
    first, _ = read_mask(root / "Annotations" / "v" / "00000.png")
    ids = [int(o) for o in np.unique(first) if o]
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("ignore")
        inference = predictor.init_state(str(root / "JPEGImages" / "v"))
        for obj in ids:
            predictor.add_new_mask(inference, 0, obj, first == obj)
        for frame, obj_ids, logits in predictor.propagate_in_video(inference):
            scores = logits[:, 0].float().numpy()
            labels = np.asarray(obj_ids, np.uint8)[scores.argmax(0)]
            write_mask(
                out / f"{frame:05d}.png",
                np.where(scores.max(0) > 0, labels, 0).astype(np.uint8),
                DAVIS_PALETTE,
            )


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-4000:]}")


def agreement(reference: Path, ours: Path) -> float:
    """Share of pixels with equal labels over the frames after the first."""
    from twoshot.data.masks import read_mask

    equal = total = 0
    for path in sorted(reference.glob("*.png"))[1:]:
        a, b = read_mask(path)[0], read_mask(ours / path.name)[0]
        equal += int((a == b).sum())
        total += a.size
    return equal / max(total, 1)


def measure(
    reference: Path | None,
    size: str,
    frames: int,
    rounds: int,
    threads: int,
    work: Path,
    variants: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The reference (when its checkout is given) and each twoshot variant (name -> extra
    ``twoshot infer`` options) on one generated video of ``frames`` frames; see the module
    docstring."""
    image_size = SIZES[size]["image_size"]
    root, weights = work / size / "data", work / size / "weights.pth"
    make_video(root, frames, image_size)
    make_weights(size, weights)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    theirs = work / size / "reference"
    twoshot = [sys.executable, "-m", "twoshot", "infer", "--checkpoint", str(weights), "--data", str(root)]
    twoshot += ["--dataset", "generic", "--device", "cpu", "--no-progress"]
    outputs: dict[str, Path] = {}
    commands: dict[str, Any] = {}
    if reference is not None:
        spec = {
            "reference": str(reference),
            "weights": str(weights),
            "size": size,
            "image_size": image_size,
            "root": str(root),
            "out": str(theirs),
            "threads": threads,
        }
        outputs["reference"] = theirs
        commands["reference"] = lambda: _run(
            [sys.executable, str(HERE), "--child-reference", json.dumps(spec)], env
        )
    for name, extra in (variants or {"twoshot": []}).items():
        out = work / size / f"twoshot-{name}"
        outputs[name] = out / "v"
        command = [*twoshot, "--out", str(out), *extra]
        commands[name] = lambda command=command: _run(command, env)
    timing = interleave(commands, rounds)
    names = list(commands)
    baseline = names[0]
    result: dict[str, Any] = {"frames": frames, "image_size": image_size, "baseline": baseline, "sides": {}}
    for name in names:
        wall = timing.median(name)
        side: dict[str, Any] = {
            "seconds": [round(s, 2) for s in timing.seconds[name]],
            "median_s": round(wall, 2),
            "frames_per_second": round(frames / wall, 3),
            "cpu_s": round(statistics.median(timing.cpu[name]), 1),
        }
        if name != baseline:
            side["baseline_over_this"] = round(timing.ratio(baseline, name), 3)
            side["pixels_equal"] = agreement(outputs[baseline], outputs[name])
        result["sides"][name] = side
    return result


def format_report(report: dict[str, Any]) -> str:
    """The table of a :func:`main` report."""
    rows = []
    for size, r in report["sizes"].items():
        for name, side in r["sides"].items():
            rows.append(
                [
                    size,
                    f"{r['frames']} x {r['image_size']}²",
                    name,
                    side["median_s"],
                    side["frames_per_second"],
                    side["cpu_s"],
                    side.get("baseline_over_this", ""),
                    f"{100 * side['pixels_equal']:.3f}%" if "pixels_equal" in side else "",
                ]
            )
    baseline = next(iter(report["sizes"].values()))["baseline"] if report["sizes"] else "baseline"
    header = [
        "size",
        "video",
        "side",
        "median wall s",
        "frames/s",
        "CPU s",
        f"{baseline} / side",
        f"pixels equal to {baseline}",
    ]
    return "\n".join(
        [
            "before: " + machine_line(report["machine_before"]),
            "after:  " + machine_line(report["machine_after"]),
            "",
            markdown_table(header, rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="checkout of facebookresearch/sam2")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--toy-frames", type=int, default=20)
    parser.add_argument("--tiny-frames", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME=OPTIONS",
        help="twoshot infer variants timed in the same rounds, e.g. torch-fp32='--no-exact --no-amp' "
        "onnxruntime='--runtime onnxruntime --no-exact --no-amp'",
    )
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--child-reference", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_reference is not None:
        child_reference(json.loads(args.child_reference))
        return 0
    variants = None
    if args.variants:
        pairs = [v.split("=", 1) for v in args.variants]
        if any(len(p) != 2 or not p[0] for p in pairs):
            parser.error(f"--variants {args.variants}: give NAME=OPTIONS pairs")
        variants = {name: value.split() for name, value in pairs}
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine_before": machine_info("cpu"), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            frames = args.toy_frames if size == "toy" else args.tiny_frames
            report["sizes"][size] = measure(
                args.reference, size, frames, args.rounds, args.threads, Path(tmp), variants
            )
            print(f"{size}: {json.dumps(report['sizes'][size])}", flush=True)
    report["machine_after"] = machine_info("cpu")
    text = format_report(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
