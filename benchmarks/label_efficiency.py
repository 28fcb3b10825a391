"""The paper's central experiment on generated videos: how much of full supervision does the
two-shot method recover from two labeled frames per video?

Trains, on one generated DAVIS-layout dataset and from one static-pretrained model:

- full supervision (every frame labeled);
- naive k-shot for k = 1, 2 (the labeled frames only);
- two-shot with k = 1, 2, 3 labeled frames (phase 1 -> bank -> phase 2);
- two-shot k = 2 without the EMA teacher (the student labels its own clips);
- two-shot k = 2 without phase 2 (the phase-1 model).

Each variant is one ``twoshot.pipeline`` run in its own folder, so an interrupted experiment
resumes. Prints a Markdown table (J&F on the validation videos, share of labeled frames) and
the share of the naive-to-full gap that two-shot recovers, and writes it as JSON.

    python benchmarks/label_efficiency.py --out runs/label-efficiency            # CPU, ~20 min on 2 idle cores
    python benchmarks/label_efficiency.py --scale gpu --device cuda --out ...     # larger, for a GPU
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from twoshot.config import Config
from twoshot.data.synth import generate_dataset, is_synth_output
from twoshot.demo import FULL, DemoScale, demo_config
from twoshot.fsutil import write_json
from twoshot.pipeline import PipelineReport, gap_note, run_pipeline

SCALES = {
    # The demo's data and schedule: the k2 variant is exactly `twoshot demo`'s run.
    "cpu": FULL,
    "gpu": DemoScale(videos=200, val_videos=30, frames=40, size=192, static_images=2000,
                     static_iterations=5000, iterations=8000, end_warm=2500, phase2_start_update=4000),
}


@dataclass(frozen=True)
class Variant:
    """One pipeline run: labeled frames per video, baselines, teacher on/off."""

    name: str
    shots: int
    baselines: tuple[str, ...]
    use_teacher: bool = True


VARIANTS = (
    Variant("k2", 2, ("naive", "full")),
    Variant("k1", 1, ("naive",)),
    Variant("k3", 3, ()),
    Variant("k2-no-teacher", 2, (), use_teacher=False),
)


def variant_config(scale: DemoScale, data: Path, out: Path, variant: Variant, init: Path | None,
                   device: str) -> Config:
    """The demo configuration for one variant (same data, schedule and seeds for all)."""
    config = demo_config(scale, data, out / variant.name, device)
    config.pipeline.shots = variant.shots
    config.pipeline.baselines = list(variant.baselines)
    config.twoshot.use_teacher = variant.use_teacher
    if init is not None:
        config.pipeline.init = str(init)     # share the first run's static pretraining
        config.pipeline.static_data = None
    return config


def rows(reports: dict[str, PipelineReport]) -> list[dict[str, object]]:
    """Table rows: (method, labeled frames per video, share of frames labeled, J&F x 100)."""
    def score(variant: str, model: str) -> float | None:
        found = reports[variant].score(model) if variant in reports else None
        return None if found is None else round(100 * found.j_and_f, 1)

    share = {v: 100 * r.labeled_frames / max(r.total_frames, 1) for v, r in reports.items()}
    table = [
        ("full supervision", "all", 100.0, score("k2", "full")),
        ("naive 1-shot", 1, share.get("k1"), score("k1", "naive")),
        ("naive 2-shot", 2, share.get("k2"), score("k2", "naive")),
        ("two-shot, 1 labeled frame", 1, share.get("k1"), score("k1", "phase2")),
        ("two-shot, 2 labeled frames", 2, share.get("k2"), score("k2", "phase2")),
        ("two-shot, 3 labeled frames", 3, share.get("k3"), score("k3", "phase2")),
        ("two-shot k=2 without teacher", 2, share.get("k2-no-teacher"), score("k2-no-teacher", "phase2")),
        ("two-shot k=2 without phase 2", 2, share.get("k2"), score("k2", "phase1")),
    ]
    return [{"method": m, "labeled_per_video": k, "labeled_share": s, "j_and_f": j}
            for m, k, s, j in table]


def format_table(table: list[dict[str, object]], gap: float | None = None,
                 recovered: float | None = None, error: float | None = None) -> str:
    """Markdown table of :func:`rows` plus the k2 run's line on the naive-to-full gap
    (:func:`twoshot.pipeline.gap_note`): the gap, the share recovered, its standard error."""
    lines = ["| method | labeled frames / video | frames labeled | J&F |", "|---|---:|---:|---:|"]
    for row in table:
        share = row["labeled_share"]
        share_text = "-" if share is None else f"{share:.1f}%"
        jf = "-" if row["j_and_f"] is None else f"{row['j_and_f']:.1f}"
        lines.append(f"| {row['method']} | {row['labeled_per_video']} | {share_text} | {jf} |")
    note = gap_note(gap, recovered, error, naive="naive 2-shot")
    if note:
        lines += ["", note + (" (Target: at least 90%.)" if recovered is not None else "")]
    return "\n".join(lines)


def run(out: str | Path, scale: str = "cpu", seed: int = 0, device: str = "auto",
        progress: bool = False, only: list[str] | None = None) -> dict[str, object]:
    """Generate the data (once), run every variant (resuming), return the table as a dict.

    only: names of the variants to run now (default all); the table covers those run.
    Every variant starts from the k2 run's static pretraining (made by the first run).
    """
    size = SCALES[scale]
    out = Path(out)
    data = out / "data"
    start = time.perf_counter()
    if not is_synth_output(data):
        generate_dataset(data, videos=size.videos, frames=size.frames, size=(size.size, size.size),
                         objects=(1, 3), seed=seed, val_videos=size.val_videos,
                         static_images=size.static_images)
    reports: dict[str, PipelineReport] = {}
    static = out / "k2" / "static" / "final.pth"
    for variant in VARIANTS:
        if only and variant.name not in only:
            continue
        init = static if variant.name != "k2" and static.is_file() else None
        config = variant_config(size, data, out, variant, init, device)
        print(f"== {variant.name}: {variant.shots} labeled frame(s) per video, "
              f"teacher {'on' if variant.use_teacher else 'off'}, baselines {list(variant.baselines)}")
        reports[variant.name] = run_pipeline(config, log=print, progress=progress)
    table = rows(reports)
    result = {"scale": scale, "seed": seed, "minutes": (time.perf_counter() - start) / 60,
              "gap": reports["k2"].gap() if "k2" in reports else None,
              "gap_recovered": reports["k2"].gap_recovered() if "k2" in reports else None,
              "gap_error": reports["k2"].gap_error() if "k2" in reports else None,
              "rows": table}
    write_json(out / "label_efficiency.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/label-efficiency")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--only", nargs="+", choices=[v.name for v in VARIANTS],
                        help="run only these variants (default: all)")
    args = parser.parse_args()
    result = run(args.out, args.scale, args.seed, args.device, args.progress, args.only)
    print()
    print(format_table(result["rows"], result["gap"], result["gap_recovered"],  # type: ignore[arg-type]
                       result["gap_error"]))  # type: ignore[arg-type]
    print(f"\n{result['minutes']:.1f} minutes; results in {Path(args.out) / 'label_efficiency.json'}")


if __name__ == "__main__":
    main()
