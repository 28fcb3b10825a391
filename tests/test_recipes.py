"""Stage recipes (twoshot.train.recipes) and ``twoshot train --stage naive|phase1|phase2``:
the same data and regimes as the pipeline; a mismatched budget or bank is refused, naming the
file, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from twoshot.bank import FORMAT, file_sha256
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import write_frame, write_mask
from twoshot.train.phases import Phase1Regime, Phase2Regime
from twoshot.train.recipes import build_recipe

TINY = [
    "--preset",
    "tiny",
    "main.iterations=2",
    "main.lr_steps=[]",
    "main.batch_size=2",
    "main.crop_size=32",
    "main.save_every=2",
    "twoshot.end_warm=0",
    "twoshot.phase2_start_update=1",
    "--no-progress",
]


@pytest.fixture()
def davis(tmp_path: Path) -> tuple[Path, Path]:
    """A DAVIS folder of two dense videos and a 2-frame budget of it."""
    root = make_davis(tmp_path / "davis", {"bear": 6, "cat": 5}, size=(32, 40)).root
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"bear": ["00000.jpg", "00004.jpg"], "cat": ["00001.jpg", "00003.jpg"]}))
    return root, budget


def _bank(tmp_path: Path, root: Path, budget: Path, videos: list[str] | None = None) -> Path:
    """A finished bank of the dataset's own annotations (a stand-in for `twoshot pseudo-label`)."""
    bank = tmp_path / "bank"
    for video in videos or ["bear", "cat"]:
        shutil.copytree(root / "Annotations" / "480p" / video, bank / video)
    manifest = {
        "format": FORMAT,
        "status": "complete",
        "budget": {"path": str(budget), "sha256": file_sha256(budget)},
        "videos": {v: {} for v in videos or ["bear", "cat"]},
    }
    (bank / "manifest.json").write_text(json.dumps(manifest))
    return bank


def _train(stage: str, root: Path, out: Path, *extra: str) -> int:
    args = ["train", "--stage", stage, "--data", str(root), "--dataset", "davis", "--split", "train"]
    return cli_main([*args, "--out", str(out), *extra, *TINY])


def test_recipes_build_the_pipeline_stages(davis: tuple[Path, Path], tmp_path: Path) -> None:
    root, budget = davis
    config = load_config("tiny")
    phase1 = build_recipe("phase1", config, root, "davis", "train", budget=budget)
    assert phase1.section == "main" and phase1.dataset is None and isinstance(phase1.regime, Phase1Regime)
    naive = build_recipe("naive", config, root, "davis", "train", budget=budget)
    assert naive.regime is None and naive.dataset is not None and naive.dataset.sampling == "labeled_only"  # type: ignore[attr-defined]
    full = build_recipe("main", config, root, "davis", "train")
    assert full.dataset is not None and full.dataset.sampling == "full"  # type: ignore[attr-defined]
    phase2 = build_recipe(
        "phase2", config, root, "davis", "train", budget=budget, bank=_bank(tmp_path, root, budget)
    )
    assert isinstance(phase2.regime, Phase2Regime) and phase2.dataset.sampling == "bank"  # type: ignore[union-attr]
    # Every clip dataset takes its objects per clip from the stage's section.
    three = load_config("tiny", overrides=["main.num_objects=3"])
    phase1 = build_recipe("phase1", three, root, "davis", "train", budget=budget)
    assert isinstance(phase1.regime, Phase1Regime)
    datasets = [phase1.regime.warmup_dataset, phase1.regime.clip_dataset]
    datasets.append(build_recipe("full", three, root, "davis", "train").dataset)
    assert [d.num_objects for d in datasets] == [3, 3, 3]  # type: ignore[union-attr]


def test_train_cli_runs_phase1_and_phase2(davis: tuple[Path, Path], tmp_path: Path) -> None:
    root, budget = davis
    assert _train("phase1", root, tmp_path / "p1", "--budget", str(budget)) == 0
    assert (tmp_path / "p1" / "final.pth").is_file()
    assert json.loads((tmp_path / "p1" / "config.json").read_text())["mode"] == "phase1"
    bank = _bank(tmp_path, root, budget)
    args = ("--bank", str(bank), "--budget", str(budget), "--init", str(tmp_path / "p1" / "final.pth"))
    assert _train("phase2", root, tmp_path / "p2", *args) == 0
    assert json.loads((tmp_path / "p2" / "config.json").read_text())["mode"] == "phase2"


def test_bad_budget_or_bank_names_the_file_and_writes_nothing(
    davis: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, budget = davis
    out = tmp_path / "out"

    def refused(stage: str, *extra: str) -> str:
        assert _train(stage, root, out, *extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and not out.exists()
        return err

    err = refused("phase2", "--budget", str(budget))
    # the message names a command that exists, so the user can follow it
    assert "--stage phase2 needs --bank" in err and "`twoshot pseudo-label`" in err
    assert "--stage phase1 needs --budget" in refused("phase1")

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"dog": ["00000.jpg"]}))
    err = refused("phase1", "--budget", str(other))
    assert f"{other}: this budget does not fit the dataset" in err and "dog" in err

    foreign = _bank(tmp_path, root, budget)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["videos"]["dog"] = {}
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    err = refused("phase2", "--bank", str(foreign))
    assert (
        f"{foreign / 'manifest.json'}: the bank holds videos that are not in the training data (dog)" in err
    )

    del manifest["videos"]["dog"]
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"bear": ["00001.jpg"]}))
    err = refused("phase2", "--bank", str(foreign), "--budget", str(second))
    assert (
        f"{foreign / 'manifest.json'}: the bank was made from another budget ({budget}), not {second}" in err
    )

    manifest["status"] = "in progress"
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    assert "the bank is not finished" in refused("phase2", "--bank", str(foreign))
    assert "not a pseudo-label bank" in refused("phase2", "--bank", str(tmp_path))


def test_static_recipe_shifts_frames_by_static_translate(tmp_path: Path) -> None:
    root = tmp_path / "static"
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:20, 10:24] = 1
    write_frame(root / "a.jpg", np.full((32, 32, 3), 90, dtype=np.uint8))
    write_mask(root / "a.png", mask)
    still = build_recipe("static", load_config("tiny", overrides=["static.crop_size=32"]), root)
    moving = build_recipe(
        "static", load_config("tiny", overrides=["static.crop_size=32", "static.translate=0.25"]), root
    )
    assert still.dataset is not None and moving.dataset is not None
    assert (still.dataset.augment.translate, moving.dataset.augment.translate) == (0.0, 0.25)
