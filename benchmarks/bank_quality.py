"""Pseudo-label bank quality against the training videos' ground truth: merge rules,
test-time augmentation and frame-suggestion strategies, with a demo run's phase-1 model.

No training: every row propagates the labeled frames of a budget through the training videos
of a ``twoshot demo`` run (whose generated training videos are fully annotated) and scores
the result with the DAVIS protocol (docs/results.md, "Better banks").

    twoshot demo --out /tmp/demo                                   # once, ~10 min
    python benchmarks/bank_quality.py --demo /tmp/demo --part merge     # merge x TTA table
    python benchmarks/bank_quality.py --demo /tmp/demo --part scales    # larger sizes
    python benchmarks/bank_quality.py --demo /tmp/demo --part budgets   # strategies x K table

Rows are printed as they finish and collected in ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from twoshot.config import InferenceConfig
from twoshot.data.budget import MODEL_STRATEGIES, load_budget, make_budget
from twoshot.data.readers import open_dataset
from twoshot.inference.bank_quality import LabelScore, format_scores, score_method
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.predictor import load_for_inference
from twoshot.inference.suggest import suggest_budget


def _engine(checkpoint: Path, device: str, **changes: object) -> tuple[PropagationEngine, InferenceConfig]:
    model, config = load_for_inference(checkpoint)
    config = dataclasses.replace(config, device=device, **changes)  # type: ignore[arg-type]
    return PropagationEngine(model, config), config


def _row(name: str, score: LabelScore, seconds: float, rows: list[dict]) -> None:
    error = score.standard_error() or 0.0
    print(f"{name:<40} J&F {100 * score.j_and_f:5.1f} ± {100 * error:.1f}  ({seconds:.0f} s)", flush=True)
    rows.append(
        {"name": name, "j_and_f": score.j_and_f, "se": error, "seconds": seconds, "objects": score.objects}
    )


def merge_part(demo: Path, device: str, scales: list[float], rows: list[dict]) -> list[LabelScore]:
    """The run's own budget: copy / static forward / bank nearest & fused x (plain, flip, flip+scales)."""
    run = demo / "run"
    sequences = open_dataset("davis", demo / "data", "train")
    budget = load_budget(run / "budget.json")
    scores = []
    start = time.perf_counter()
    scores.append(score_method("copy", sequences, budget, name="copy nearest labeled mask"))
    _row(scores[-1].method, scores[-1], time.perf_counter() - start, rows)
    static, _ = _engine(run / "static" / "final.pth", device)
    start = time.perf_counter()
    scores.append(score_method("forward", sequences, budget, static, name="static model, forward from first"))
    _row(scores[-1].method, scores[-1], time.perf_counter() - start, rows)
    for merge in ("nearest", "fused"):
        for tta, changes in (
            ("", {}),
            (" + flip", {"flip": True}),
            (f" + flip + scales {scales}", {"flip": True, "scales": scales}),
        ):
            engine, _ = _engine(run / "phase1" / "final.pth", device, merge=merge, **changes)
            start = time.perf_counter()
            name = f"bank {merge}{tta}"
            scores.append(score_method("bank", sequences, budget, engine, name=name))
            _row(name, scores[-1], time.perf_counter() - start, rows)
    return scores


def scales_part(demo: Path, device: str, rows: list[dict]) -> list[LabelScore]:
    """The run's own budget at larger sizes: scales 1.5 and 2 alone, then with flip and 1.0
    under both merges."""
    run = demo / "run"
    sequences = open_dataset("davis", demo / "data", "train")
    budget = load_budget(run / "budget.json")
    scores = []
    for name, changes in (
        ("bank nearest", {}),
        ("bank nearest + scales [1.5, 2.0]", {"scales": [1.5, 2.0]}),
        ("bank nearest + flip + scales [1.0, 1.5, 2.0]", {"flip": True, "scales": [1.0, 1.5, 2.0]}),
        (
            "bank fused + flip + scales [1.0, 1.5, 2.0]",
            {"merge": "fused", "flip": True, "scales": [1.0, 1.5, 2.0]},
        ),
    ):
        engine, _ = _engine(run / "phase1" / "final.pth", device, **changes)
        start = time.perf_counter()
        scores.append(score_method("bank", sequences, budget, engine, name=name))
        _row(name, scores[-1], time.perf_counter() - start, rows)
    return scores


def budgets_part(
    demo: Path, device: str, shots: list[int], seeds: list[int], rows: list[dict]
) -> list[LabelScore]:
    """Strategies random (several seeds) / uniform / uncertainty / disagreement at each K,
    banks nearest & fused."""
    sequences = open_dataset("davis", demo / "data", "train")
    checkpoint = demo / "run" / "phase1" / "final.pth"
    engines = {merge: _engine(checkpoint, device, merge=merge)[0] for merge in ("nearest", "fused")}
    scores = []
    for k in shots:
        budgets = {f"random seed {s}": make_budget(sequences, k, "random", s) for s in seeds}
        budgets["uniform"] = make_budget(sequences, k, "uniform")
        for strategy in MODEL_STRATEGIES:
            start = time.perf_counter()
            budgets[strategy] = suggest_budget(sequences, k, engines["nearest"], strategy=strategy)
            print(f"{strategy} suggestions K={k}: {time.perf_counter() - start:.0f} s", flush=True)
        for name, budget in budgets.items():
            for merge, engine in engines.items():
                start = time.perf_counter()
                score = score_method("bank", sequences, budget, engine, name=f"K={k} {name} {merge}")
                _row(score.method, score, time.perf_counter() - start, rows)
                scores.append(score)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", type=Path, required=True, help="a twoshot demo folder (data/ and run/)")
    parser.add_argument("--part", choices=("merge", "scales", "budgets"), required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.25])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows: list[dict] = []
    if args.part == "merge":
        scores = merge_part(args.demo, args.device, args.scales, rows)
        reference = next(s for s in scores if s.method == "bank nearest")
    elif args.part == "scales":
        scores = scales_part(args.demo, args.device, rows)
        reference = scores[0]
    else:
        scores = budgets_part(args.demo, args.device, args.shots, args.seeds, rows)
        reference = None
    print()
    print(format_scores(scores, reference))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
