"""The demo's pipeline up to the pseudo-label bank, for trying training settings quickly.

Runs ``twoshot demo``'s configuration (its data generator, preset and schedule, e.g.
``twoshot.demo.SAM2_FULL`` for ``--model sam2``) with extra ``key=value`` overrides:
budget, static pretraining, phase 1 and the bank, then prints the bank's J&F on the training
videos (the figure ``run/bank_value.md`` compares with copying the nearest labeled mask).
``--full`` goes on with phase 2 and naive 2-shot and prints the validation J&F of phase 1,
phase 2 and naive. ``--static-from RUN`` reuses ``RUN/static/final.pth`` (and
``--teacher-from-static`` makes that static model the bank's teacher instead of phase 1).

    OMP_NUM_THREADS=1 python benchmarks/demo_bank.py --model sam2 --data /tmp/d --out /tmp/r \\
        --static-iterations 300 main.lr=2e-4
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

from twoshot.config import apply_override
from twoshot.demo import FULL, SAM2_FULL, demo_config, demo_data
from twoshot.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2")
    parser.add_argument("--data", type=Path, required=True, help="the demo's data (generated if absent)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (complete steps are reused)")
    parser.add_argument("--static-iterations", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="each video stage")
    parser.add_argument("--static-from", type=Path, default=None)
    parser.add_argument("--teacher-from-static", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value configuration overrides")
    args = parser.parse_args()

    scale = SAM2_FULL if args.model == "sam2" else FULL
    scale = replace(
        scale,
        static_iterations=args.static_iterations or scale.static_iterations,
        iterations=args.iterations or scale.iterations,
    )
    demo_data(scale, args.data)
    config = demo_config(scale, args.data, args.out, "cpu", args.model)
    for override in args.overrides:
        apply_override(config, override)
    if args.static_from is not None:
        (args.out / "static").mkdir(parents=True, exist_ok=True)
        shutil.copy(args.static_from / "static" / "final.pth", args.out / "static" / "final.pth")
    pipeline = Pipeline(config, progress=False)
    pipeline.preflight()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    budget_path, budget = pipeline.budget()
    init = pipeline.static()
    teacher = init if args.teacher_from_static and init is not None else pipeline.phase1(budget, init)
    bank = pipeline.bank(budget_path, teacher)
    score = pipeline.evaluate_bank(bank)
    print(f"bank J&F {100 * (score or 0.0):.1f} ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.full:
        weights = {
            "phase2": pipeline.phase2(bank, init),
            "naive": pipeline.naive(budget, init),
            "phase1": teacher,
        }
        for name, path in weights.items():
            scores = pipeline.evaluate(name, pipeline.predict(name, path))
            print(f"{name} J&F {100 * scores['J&F-Mean']:.1f}", flush=True)


if __name__ == "__main__":
    main()
