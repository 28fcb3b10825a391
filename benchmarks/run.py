"""One table of twoshot's speed figures, each comparison measured side by side in this run.

    python benchmarks/run.py                      # CPU, about 4-6 minutes on a quiet 2-core machine
    python benchmarks/run.py --quick              # smaller inputs, about 1-2 minutes
    python benchmarks/run.py --device cuda        # a GPU: stcn at 480p in fp32 and AMP, 60 frames
    python benchmarks/run.py --json bench.json    # also write the table and all raw figures

Sections (``--only a c`` runs some of them), each reusing the script that measures it:

a. pseudo labels of a generated 480p video with two labeled frames: the shared-key engine vs
   four independent propagation runs (the reference's way), interleaved rounds, masks
   asserted identical (``pseudo_label_speed.run``). Target: at least 2.5x.
b. ``twoshot eval`` (``evaluate_folders`` with 2 worker processes) vs a straightforward
   per-frame, per-object evaluator, every per-frame J and F asserted identical
   (``eval_speed.run``). Target: at least 5x on 2 cores with 2 workers.
c. inference frames/s and peak memory at 480p for ``tiny`` and ``stcn`` (``stcn`` on a CPU
   only for a few frames) (``inference_speed.run``), and the engine's speed options against
   its default, interleaved, with the pixels whose mask differs (``inference_speed.fast_path``;
   ``--compile`` adds torch.compile, which takes minutes to compile on a small CPU).
   Reference: STCN's published 20.2 frames/s (34.1 with AMP) on a GTX 2080 Ti.
d. training data loader: clips/s of ``VOSClipDataset`` (full sampling, 384x384 crops of 480p
   JPEG videos) with 0 and 2 worker processes, interleaved (``train_speed.time_loader``).

The machine (CPU model, cores, torch and its threads, device, load average before and after)
is printed above the table: on a shared machine the load decides the absolute figures, the
ratios much less.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import interleave, load_average, machine_info, markdown_table, print_report

SECTIONS: tuple[str, ...] = ("a", "b", "c", "d")
STCN_PUBLISHED = "STCN paper: 20.2 frames/s, 34.1 with AMP (GTX 2080 Ti, DAVIS 2017 val)"


def _sizes(quick: bool, device: str) -> dict[str, Any]:
    """Input sizes of every section for the default and the ``--quick`` run."""
    cuda = device.startswith("cuda")
    return {
        "pseudo_frames": 16 if quick else 32,
        "pseudo_rounds": 1 if quick else 3,
        "eval_videos": 2 if quick else 6,
        "eval_frames": 20 if quick else 40,
        "eval_repeat": 1 if quick else 3,
        "tiny_frames": 60 if cuda else (8 if quick else 24),
        "stcn_frames": 60 if cuda else (2 if quick else 4),
        "fast_frames": 30 if cuda else (8 if quick else 16),
        "fast_rounds": 1 if quick else 3,
        "loader_batches": 5 if quick else 10,
        "loader_rounds": 1 if quick else 3,
    }


def _met(value: float, target: float) -> str:
    return "yes" if value >= target else "**no**"


def section_a(sizes: dict[str, Any], device: str) -> tuple[list[list[Any]], dict]:
    """Pseudo-labelling: shared-key engine vs four independent runs."""
    from pseudo_label_speed import run as pseudo_run

    report = pseudo_run("tiny", sizes["pseudo_frames"], device=device, rounds=sizes["pseudo_rounds"])
    row = [
        "a",
        f"pseudo labels, tiny, {sizes['pseudo_frames']} frames 480x854, labeled frames "
        f"{report['settings']['labeled']}: four independent runs / shared-key engine",
        f"**{report['speedup']}x** (median of {sizes['pseudo_rounds']} rounds "
        f"{report['speedup_per_round']}; {report['reference_seconds']} s vs "
        f"{report['shared_seconds']} s; {report['reference_key_encodes']} vs "
        f"{report['shared_key_encodes']} key encodings); masks identical",
        ">= 2.5x",
        _met(report["speedup"], 2.5),
    ]
    return [row], report


def section_b(sizes: dict[str, Any]) -> tuple[list[list[Any]], dict]:
    """Evaluation: twoshot eval with 2 workers vs the straightforward evaluator."""
    from eval_speed import run as eval_run

    report = eval_run(
        sizes["eval_videos"], sizes["eval_frames"], objects=3, workers=2, repeat=sizes["eval_repeat"]
    )
    what = (
        f"`twoshot eval` vs straightforward per-frame, per-object evaluator, "
        f"{report['videos']} videos x {report['frames']} frames x 3 objects, 854x480"
    )
    rows = [
        [
            "b",
            what + ", 2 worker processes",
            f"**{report['speedup_Nproc']:.1f}x** ({report['straightforward_s']:.2f} s vs "
            f"{report['fast_Nproc_s']:.2f} s, best of {sizes['eval_repeat']}); per-frame J/F identical",
            ">= 5x",
            _met(report["speedup_Nproc"], 5.0),
        ],
        [
            "b",
            what + ", 1 process",
            f"{report['speedup_1proc']:.1f}x ({report['fast_1proc_s']:.2f} s)",
            "-",
            "-",
        ],
        [
            "b",
            "metrics alone, arrays in memory (no PNG reading)",
            f"{report['speedup_memory']:.1f}x ({report['memory_straightforward_s']:.2f} s vs "
            f"{report['memory_fast_s']:.2f} s)",
            "-",
            "-",
        ],
    ]
    return rows, report


def section_c(sizes: dict[str, Any], device: str, compile_: bool) -> tuple[list[list[Any]], dict]:
    """Inference frames/s and peak memory, and the engine's speed options."""
    from inference_speed import FAST_PATH_OPTIONS, fast_path
    from inference_speed import run as inference_run

    cuda = device.startswith("cuda")
    frames = {"tiny": sizes["tiny_frames"], "stcn": sizes["stcn_frames"]}
    reports = {"fp32": inference_run(("tiny", "stcn"), frames, device=device, repeats=2 if cuda else 1)}
    if cuda:
        reports["amp"] = inference_run(("tiny", "stcn"), frames, device=device, amp=True, repeats=2)
    rows = []
    for precision, report in reports.items():
        for preset, r in report["results"].items():
            memory = f"peak RSS {r['peak_rss_mb']:.0f} MiB"
            if r.get("peak_cuda_mb") is not None:
                memory += f", peak CUDA {r['peak_cuda_mb']:.0f} MiB"
            target = STCN_PUBLISHED if preset == "stcn" else "-"
            rows.append(
                [
                    "c",
                    f"inference, {preset}, {r['frames']} frames 480x854 (shorter side 480), "
                    f"2 objects, {precision}, {device}",
                    f"**{r['frames_per_second']} frames/s**; {memory}",
                    target,
                    "compare on a GPU" if preset == "stcn" else "-",
                ]
            )
    options = [o for o in FAST_PATH_OPTIONS if compile_ or "compile" not in o]
    fast = fast_path(
        "stcn" if cuda else "tiny",
        sizes["fast_frames"],
        options=options,
        rounds=sizes["fast_rounds"],
        device=device,
    )
    for name, r in fast["results"].items():
        if name == "default":
            continue
        note = f"; warm-up (compiling) {r['warmup_seconds']} s" if "compile" in name else ""
        if r.get("fell_back_to_eager"):
            note += "; torch.compile unavailable, ran eagerly"
        rows.append(
            [
                "c",
                f"engine option `{name}` vs default, {fast['settings']['preset']}, "
                f"{sizes['fast_frames']} frames 480p, {sizes['fast_rounds']} interleaved rounds",
                f"{r['speedup']}x ({r['frames_per_second']} vs "
                f"{fast['results']['default']['frames_per_second']} frames/s); "
                f"{r['pixels_differing']} of {r['pixels']} mask pixels differ{note}",
                "-",
                "-",
            ]
        )
    return rows, {"inference": reports, "fast_path": fast}


def section_d(sizes: dict[str, Any]) -> tuple[list[list[Any]], dict]:
    """Training data loader clips/s with 0 and 2 workers, interleaved."""
    from train_speed import make_videos, time_loader

    rates: dict[str, list[float]] = {"workers_0": [], "workers_2": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_videos(Path(tmp) / "davis", 4, 20, (480, 854))
        batches = sizes["loader_batches"]
        interleave(
            {
                "workers_0": lambda: time_loader(root, 384, 4, 0, batches),
                "workers_2": lambda: time_loader(root, 384, 4, 2, batches),
            },
            sizes["loader_rounds"],
            after=lambda name, value: rates[name].append(value),
        )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    rows = [
        [
            "d",
            f"training loader, VOSClipDataset full sampling, 480x854 JPEG -> 384x384 clips, "
            f"batch 4, {name.replace('_', ' ')}",
            f"**{medians[name]:.1f} clips/s** (median of {sizes['loader_rounds']})",
            "-",
            "-",
        ]
        for name in rates
    ]
    return rows, {"clips_per_second": rates, "median": medians}


def run(
    quick: bool = False, device: str = "cpu", sections: Sequence[str] = SECTIONS, compile_: bool = False
) -> dict:
    """Measure the chosen sections. Returns {"machine", "sizes", "rows", "raw", "seconds"}:
    rows are [section, what, figure, target, met] table rows, raw each section's full report."""
    sizes = _sizes(quick, device)
    machine = machine_info(device)
    start = time.perf_counter()
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {}
    for section in SECTIONS:
        if section not in sections:
            continue
        if section == "a":
            new, raw["a"] = section_a(sizes, device)
        elif section == "b":
            new, raw["b"] = section_b(sizes)
        elif section == "c":
            new, raw["c"] = section_c(sizes, device, compile_)
        else:
            new, raw["d"] = section_d(sizes)
        rows.extend(new)
    machine["load_average_1min_after"] = load_average()
    return {
        "machine": machine,
        "sizes": sizes,
        "quick": quick,
        "rows": rows,
        "raw": raw,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_report(report: dict) -> str:
    """The machine line and the Markdown table of a :func:`run` report."""
    m = report["machine"]
    head = (
        f"machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads), device {m['device']}, Python {m['python']}, "
        f"{m['platform']}; 1-min load average {m['load_average_1min']} before, "
        f"{m['load_average_1min_after']} after; {report['seconds']} s"
        f"{' (--quick)' if report['quick'] else ''}"
    )
    table = markdown_table(["", "what", "measured", "target", "met"], report["rows"])
    return head + "\n\n" + table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the machine and the table; ``--json PATH`` also writes them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these sections"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile in section c (slow to compile on a CPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    import torch  # here, not at the top: eval's spawned workers re-import this script

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(args.quick, args.device, args.only, args.compile)
    print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
