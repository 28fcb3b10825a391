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

Differences of a few J&F between single runs can be the training seed's doing (about 2-3 J&F
for the tiny model at 4 000 iterations, docs/results.md). ``--repeats R`` trains every variant
R times with training seeds ``main.seed + r`` (folders ``NAME``, ``NAME-seed1``, ...; the
data, the budget and the static pretraining stay the same); the table then gives mean J&F
and the runs' range, and the gap's standard error includes the seeds' spread
(:func:`twoshot.report.estimate_gap`).

    python benchmarks/label_efficiency.py --out runs/label-efficiency        # CPU, ~20 min on 2 idle cores
    python benchmarks/label_efficiency.py --scale gpu --device cuda --out ...     # larger, for a GPU
    python benchmarks/label_efficiency.py --repeats 3 --out ...                   # 3 training seeds
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from twoshot.config import Config
from twoshot.demo import FULL, DemoScale, demo_config, demo_data
from twoshot.errors import UserError
from twoshot.fsutil import write_json
from twoshot.pipeline import run_pipeline
from twoshot.report import GapEstimate, PipelineReport, estimate_gap, gap_note

SCALES = {
    # The demo's data and schedule: the k2 variant is exactly `twoshot demo`'s run.
    "cpu": FULL,
    "gpu": DemoScale(
        videos=200,
        val_videos=30,
        frames=40,
        size=192,
        static_images=2000,
        static_iterations=5000,
        iterations=8000,
        end_warm=2500,
        phase2_start_update=4000,
    ),
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


def run_name(variant: Variant, repeat: int) -> str:
    """The folder of ``variant``'s run with training seed offset ``repeat`` (0: its name)."""
    return variant.name if repeat == 0 else f"{variant.name}-seed{repeat}"


def variant_config(
    scale: DemoScale, data: Path, out: Path, variant: Variant, init: Path | None, device: str, repeat: int = 0
) -> Config:
    """The demo configuration for one variant (same data, schedule and seeds for all), with
    the video stages' training seed moved by ``repeat``."""
    config = demo_config(scale, data, out / run_name(variant, repeat), device)
    config.main.seed += repeat
    config.pipeline.shots = variant.shots
    config.pipeline.baselines = list(variant.baselines)
    config.twoshot.use_teacher = variant.use_teacher
    if init is not None:
        config.pipeline.init = str(init)  # share the first run's static pretraining
        config.pipeline.static_data = None
    return config


def rows(reports: dict[str, list[PipelineReport]]) -> list[dict[str, object]]:
    """Table rows from each variant's runs (one per training seed): method, labeled frames per
    video, share of frames labeled, mean J&F x 100 and the runs' J&F x 100 (``runs``)."""

    def score(variant: str, model: str) -> list[float]:
        found = [r.score(model) for r in reports.get(variant, [])]
        return [round(100 * s.j_and_f, 1) for s in found if s is not None]

    share = {v: 100 * r[0].labeled_frames / max(r[0].total_frames, 1) for v, r in reports.items() if r}
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
    return [
        {
            "method": m,
            "labeled_per_video": k,
            "labeled_share": s,
            "j_and_f": round(sum(runs) / len(runs), 1) if runs else None,
            "runs": runs,
        }
        for m, k, s, runs in table
    ]


def format_table(table: list[dict[str, object]], gap: GapEstimate | None = None) -> str:
    """Markdown table of :func:`rows` (with a column of the runs' range when a variant ran
    more than once) plus the line on the k2 runs' naive-to-full gap
    (:func:`twoshot.report.gap_note`): the gap, the share recovered, its standard error."""
    repeated = any(len(row["runs"]) > 1 for row in table)  # type: ignore[arg-type]
    header = "| method | labeled frames / video | frames labeled | J&F |" + (" runs |" if repeated else "")
    lines = [header, "|---|---:|---:|---:|" + ("---:|" if repeated else "")]
    for row in table:
        share = row["labeled_share"]
        share_text = "-" if share is None else f"{share:.1f}%"
        jf = "-" if row["j_and_f"] is None else f"{row['j_and_f']:.1f}"
        line = f"| {row['method']} | {row['labeled_per_video']} | {share_text} | {jf} |"
        if repeated:
            runs: list[float] = row["runs"]  # type: ignore[assignment]
            line += f" {min(runs):.1f}–{max(runs):.1f} |" if len(runs) > 1 else " |"
        lines.append(line)
    note = gap_note(gap.gap, gap.recovered, gap.error, naive="naive 2-shot") if gap else None
    if note:
        if gap is not None and gap.runs > 1:
            note += f" (Means of {gap.runs} training seeds; the ± includes how much the seeds move the gap.)"
        lines += [
            "",
            note + (" (Target: at least 90%.)" if gap is not None and gap.recovered is not None else ""),
        ]
    return "\n".join(lines)


def run(
    out: str | Path,
    scale: str = "cpu",
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    only: list[str] | None = None,
    repeats: int = 1,
) -> dict[str, object]:
    """Generate the data (once), run every variant (resuming), return the table as a dict.

    seed: the data's; only: names of the variants to run now (default all), the table covers
    those run; repeats: runs per variant, each with its own training seed. Every run starts
    from the k2 run's static pretraining (made by the first run).
    """
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    size = SCALES[scale]
    out = Path(out)
    data = out / "data"
    start = time.perf_counter()
    demo_data(size, data, seed)
    reports: dict[str, list[PipelineReport]] = {}
    static = out / "k2" / "static" / "final.pth"
    for repeat in range(repeats):
        for variant in VARIANTS:
            if only and variant.name not in only:
                continue
            first = variant.name == "k2" and repeat == 0
            init = static if not first and static.is_file() else None
            config = variant_config(size, data, out, variant, init, device, repeat)
            print(
                f"== {run_name(variant, repeat)}: {variant.shots} labeled frame(s) per video, "
                f"teacher {'on' if variant.use_teacher else 'off'}, baselines "
                f"{list(variant.baselines)}, training seed {config.main.seed}"
            )
            reports.setdefault(variant.name, []).append(run_pipeline(config, log=print, progress=progress))
    gap = estimate_gap(reports.get("k2", []))
    result = {
        "scale": scale,
        "seed": seed,
        "repeats": repeats,
        "minutes": (time.perf_counter() - start) / 60,
        "gap": gap.gap,
        "gap_recovered": gap.recovered,
        "gap_error": gap.error,
        "gap_runs": gap.runs,
        "rows": rows(reports),
    }
    write_json(out / "label_efficiency.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/label-efficiency")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of every variant, each with its own training seed (default 1)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--only", nargs="+", choices=[v.name for v in VARIANTS], help="run only these variants (default: all)"
    )
    args = parser.parse_args()
    try:
        result = run(args.out, args.scale, args.seed, args.device, args.progress, args.only, args.repeats)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    print()
    gap = GapEstimate(
        result["gap"],
        result["gap_error"],
        result["gap_recovered"],  # type: ignore[arg-type]
        result["gap_runs"],
    )  # type: ignore[arg-type]
    print(format_table(result["rows"], gap))  # type: ignore[arg-type]
    print(f"\n{result['minutes']:.1f} minutes; results in {Path(args.out) / 'label_efficiency.json'}")


if __name__ == "__main__":
    main()
