"""benchmarks/label_efficiency.py: its table over training seeds, and repeated runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from helpers import load_benchmark
from twoshot.demo import DemoScale
from twoshot.errors import UserError
from twoshot.report import ModelScore, PipelineReport


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("label_efficiency")


def _report(**scores: float) -> PipelineReport:
    report = PipelineReport(out="run", budget="budget.json", labeled_frames=2, total_frames=24)
    for name, value in scores.items():
        report.models.append(ModelScore(name, name, value, value, value, 0.1, None, {}))
    return report


def test_table_gives_mean_and_range_of_the_seeds(bench: ModuleType) -> None:
    from twoshot.report import estimate_gap

    reports = {
        "k2": [
            _report(naive=0.50, full=0.56, phase2=0.55, phase1=0.52),
            _report(naive=0.52, full=0.58, phase2=0.54, phase1=0.53),
        ],
        "k1": [_report(naive=0.40, phase2=0.45)],
    }
    table = {row["method"]: row for row in bench.rows(reports)}
    assert table["naive 2-shot"]["runs"] == [50.0, 52.0] and table["naive 2-shot"]["j_and_f"] == 51.0
    assert table["two-shot, 2 labeled frames"]["j_and_f"] == 54.5
    assert table["naive 1-shot"]["runs"] == [40.0] and table["naive 1-shot"][
        "labeled_share"
    ] == pytest.approx(100 / 12)
    assert table["two-shot, 3 labeled frames"]["j_and_f"] is None
    # Gap 0.06 in both runs (error 0): two-shot's mean 0.545 recovers (0.545 - 0.51) / 0.06.
    gap = estimate_gap(reports["k2"])
    text = bench.format_table(bench.rows(reports), gap)
    assert "| naive 2-shot | 2 | 8.3% | 51.0 | 50.0–52.0 |" in text
    assert "| naive 1-shot | 1 | 8.3% | 40.0 | |" in text
    assert (
        "Two-shot recovers 58% of the gap between naive 2-shot and full supervision (6.0 ± 0.0 J&F)." in text
    )
    assert "(Means of 2 training seeds; the ± includes how much the seeds move the gap.)" in text
    # One run per variant: no range column, no line about seeds.
    single = {"k2": reports["k2"][:1]}
    text = bench.format_table(bench.rows(single), estimate_gap(single["k2"]))
    assert "| naive 2-shot | 2 | 8.3% | 50.0 |" in text.splitlines() and "seeds" not in text


def test_repeats_train_with_their_own_seeds_from_one_static_model(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = DemoScale(
        videos=3,
        val_videos=2,
        frames=6,
        size=48,
        static_images=6,
        static_iterations=4,
        iterations=6,
        end_warm=2,
        phase2_start_update=3,
    )
    monkeypatch.setitem(bench.SCALES, "cpu", tiny)
    result = bench.run(tmp_path / "le", device="cpu", only=["k2"], repeats=2)
    first, second = (
        json.loads((tmp_path / "le" / name / "config.json").read_text()) for name in ("k2", "k2-seed1")
    )
    assert second["main"]["seed"] == first["main"]["seed"] + 1
    assert second["pipeline"]["init"] == str(tmp_path / "le" / "k2" / "static" / "final.pth")
    assert not (tmp_path / "le" / "k2-seed1" / "static").exists()
    naive = next(r for r in result["rows"] if r["method"] == "naive 2-shot")
    assert len(naive["runs"]) == 2 and result["gap_runs"] == 2
    assert json.loads((tmp_path / "le" / "label_efficiency.json").read_text())["repeats"] == 2


def test_no_repeats_is_refused_before_anything_is_written(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--repeats must be at least 1, got 0"):
        bench.run(tmp_path / "le", repeats=0)
    assert not (tmp_path / "le").exists()
