"""benchmarks/train_vs_reference.py without any checkout: its arguments, inputs and comparison."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from helpers import BENCHMARKS, load_benchmark


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its `from common import ...`, as a script
    return load_benchmark("train_vs_reference")


def test_checkouts_missing_or_wrong_stop_with_a_message(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main([])
    assert str(stop.value) == (
        "give --seed-repo (the two-shot paper's code), --cutie (hkchengrex/Cutie) and/or "
        "--sam2 (facebookresearch/sam2)"
    )
    with pytest.raises(SystemExit) as stop:
        bench.main(["--seed-repo", str(tmp_path / "nowhere")])
    assert str(stop.value) == (
        f"--seed-repo {tmp_path / 'nowhere'}: not a checkout of the two-shot paper's code (no model/model.py)"
    )
    with pytest.raises(SystemExit) as stop:
        bench.main(["--cutie", str(tmp_path)])
    assert str(stop.value) == f"--cutie {tmp_path}: not a checkout of hkchengrex/Cutie (no cutie/ folder)"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--sam2", str(tmp_path)])
    assert str(stop.value) == (
        f"--sam2 {tmp_path}: not a checkout of facebookresearch/sam2 (no training/loss_fns.py)"
    )


def test_bad_options_are_refused(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--steps", "0"], "--steps must be >= 1"),
        (["--size", "40"], "--size must be a multiple of 16, at least 32"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
    ):
        with pytest.raises(SystemExit):
            bench.main(["--seed-repo", "x", *argv])
        assert message in capsys.readouterr().err


def test_cutie_comparison_absent_is_skipped_with_a_message(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "HERE", tmp_path / "train_vs_reference.py")
    result = bench.run_cutie(tmp_path, 2, "float64")
    assert result["skipped"].startswith("benchmarks/cutie_train_reference.py is not in this checkout")
    assert result["skipped"] in capsys.readouterr().out


def test_batches_hide_the_unlabeled_frames(bench: ModuleType) -> None:
    (step,) = bench.make_batches(1, 32, "float64")
    partial, truth = step["partial"], step["truth"]
    assert partial["rgb"].shape == (2, 3, 3, 32, 32) and partial["rgb"].dtype == torch.float64
    assert partial["labeled"].tolist() == [[True, False, True], [True, False, False]]
    assert (partial["cls_gt"][~partial["labeled"]] == -1).all()
    assert torch.equal(partial["cls_gt"][partial["labeled"]], truth["cls_gt"][partial["labeled"]])
    assert set(truth["cls_gt"][0].unique().tolist()) == {0, 1, 2} and set(
        truth["cls_gt"][1].unique().tolist()
    ) == {0, 1}
    assert step["labeled"]["labeled"].all()


def test_comparison_of_losses_targets_and_weights(bench: ModuleType) -> None:
    start = {"w": torch.zeros(3), "n": torch.tensor(0)}
    targets = torch.tensor([[[0, 1]], [[1, -1]], [[2, 2]]])[None]  # [1, 3, 1, 2]
    other = targets.clone()
    other[0, 2, 0, 1] = -1
    reference = {
        "loss": [2.0], "p": [1.0], "used": ["semi"], "targets": [targets],
        "student": {"w": torch.tensor([1.0, -2.0, 0.5]), "n": torch.tensor(3)},
    }  # fmt: skip
    ours = {
        "loss": [2.5], "p": [1.0], "used": ["semi"], "targets": [other],
        "student": {"w": torch.tensor([1.0, -2.25, 0.5]), "n": torch.tensor(3)},
        "teacher": {"w": torch.zeros(3)},
    }  # fmt: skip
    result = bench.compare_scenario(reference, ours, start)
    (row,) = result["steps"]
    assert row["relative_diff"] == 0.25 and row["batch"] == ["semi", "semi"]
    assert row["targets_agree"] == 0.75 and row["targets_labeled"] == 0.5  # frames 1-2 only
    assert result["student"] == {
        "max_abs_diff": 0.25,
        "worst_tensor": "w",
        "max_update": 2.25,
        "diff_over_update": 0.25 / 2.25,
        "missing_in_reference": [],
    }
    assert result["teacher"] == "only one side has a teacher"
    text = bench.format_scenario("phase1", {"first_it": 5, **result})
    assert "| 5 | semi / semi | 1.00000 / 1.00000 | 2 | 2.5 | 2.5e-01 | 75.0000% (50.0% labeled) |" in text
    assert "student: max |paper - twoshot| 2.5e-01 (w), max update 2.2e+00, ratio 1.1e-01" in text


def test_rounding_control_is_printed_beside_the_comparison(bench: ModuleType) -> None:
    start = {"w": torch.zeros(2)}
    first = {"loss": [4.0], "p": [1.0], "used": ["ori"], "targets": [torch.zeros(1, 3, 1, 1)]}
    again = {**first, "loss": [4.0 + 4e-12]}
    first["student"], again["student"] = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 2.5])}
    control = bench.compare_scenario(first, again, start)
    text = bench.format_scenario(
        "supervised", {"first_it": 0, **control, "rounding_control": {"threads": 2, **control}}
    )
    assert "paper (2 threads) against paper (this process's threads): losses within 1.0e-12 relative" in text
    assert "  student: max diff 5.0e-01 (w), ratio to the max update 2.0e-01" in text
