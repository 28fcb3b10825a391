"""A model is a plugin: the test-only model of ``toy_model.py``, registered at run time, trains
every stage, makes a pseudo-label bank and segments videos through the command line, while no
file of the package names it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import toy_model
from twoshot.cli import main as cli_main
from twoshot.config import load_config, to_dict
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import read_mask, write_frame, write_mask
from twoshot.errors import UserError
from twoshot.model.checkpoint import detect_kind, read_state_dict
from twoshot.model.registry import model_kinds, register, unregister

SRC = Path(__file__).resolve().parents[1] / "src" / "twoshot"


@pytest.fixture()
def toy() -> Iterator[None]:
    register(toy_model.SPEC)
    try:
        yield
    finally:
        unregister("toy")


def test_no_package_file_knows_the_toy_model() -> None:
    assert "toy" not in model_kinds()
    for path in SRC.rglob("*"):
        if path.suffix in (".py", ".yaml"):
            assert "toy_model" not in path.read_text(encoding="utf-8"), path


def test_toy_config_sections_and_checks(toy: None) -> None:
    config = load_config("toy-tiny", overrides=["model.toy.channels=6", "main.toy.lr_scale=0.5"])
    assert config.model.kind == "toy" and config.model.toy.channels == 6 and config.main.toy.lr_scale == 0.5
    assert to_dict(config)["model"]["toy"] == {"channels": 6}
    with pytest.raises(UserError, match=r"config key 'model.toy.channels': must be at least 1, got 0"):
        load_config("toy-tiny", overrides=["model.toy.channels=0"])
    with pytest.raises(UserError, match=r"config key 'static.toy.lr_scale': must be above 0, got 0.0"):
        load_config("toy-tiny", overrides=["static.toy.lr_scale=0"])
    with pytest.raises(UserError, match=r"'main.toy.lr_scale' is a toy setting, but model.kind is 'stcn'"):
        load_config("stcn", overrides=["main.toy.lr_scale=2"])
    with pytest.raises(
        UserError, match=r"'model.cutie.num_heads' is a cutie setting, but model.kind is 'toy'"
    ):
        load_config("toy-tiny", overrides=["model.cutie.num_heads=2"])


def test_toy_model_trains_every_stage_and_runs_through_the_cli(toy: None, tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"bear": 6, "cat": 5}, size=(32, 40)).root
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"bear": ["00000.jpg", "00004.jpg"], "cat": ["00001.jpg", "00003.jpg"]}))
    rng = np.random.default_rng(0)
    for i in range(2):
        write_frame(tmp_path / "pairs" / f"im{i}.jpg", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[10:30, 12:36] = 1
        write_mask(tmp_path / "pairs" / f"im{i}.png", mask)
    common = ["--preset", "toy-tiny", "--device", "cpu", "--no-progress"]
    davis = ["--data", str(root), "--dataset", "davis", "--split", "train"]

    def train(stage: str, out: str, *extra: str) -> Path:
        data = ["--data", str(tmp_path / "pairs")] if stage == "static" else davis
        assert (
            cli_main(["train", "--stage", stage, *data, "--out", str(tmp_path / out), *extra, *common]) == 0
        )
        return tmp_path / out / "final.pth"

    static = train("static", "static")
    assert json.loads((tmp_path / "static" / "config.json").read_text())["config"]["model"]["kind"] == "toy"
    train("full", "full", "--init", str(static))
    train("naive", "naive", "--budget", str(budget), "--init", str(static))
    phase1 = train("phase1", "phase1", "--budget", str(budget), "--init", str(static))
    bank = tmp_path / "bank"
    label = ["pseudo-label", "--checkpoint", str(phase1), *davis, "--budget", str(budget), "--out", str(bank)]
    assert cli_main([*label, "--device", "cpu", "--no-progress"]) == 0
    assert read_mask(bank / "bear" / "00002.png")[0].shape == (32, 40)
    phase2 = train("phase2", "phase2", "--bank", str(bank), "--budget", str(budget), "--init", str(phase1))

    state = read_state_dict(phase2)
    assert detect_kind(state) == "toy" and sorted(state) == [
        "toy_encoder.bias",
        "toy_encoder.weight",
        "toy_temperature",
    ]
    out = tmp_path / "pred"
    infer = [
        "infer",
        "--checkpoint",
        str(phase2),
        *davis,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli_main(infer) == 0
    assert sorted(p.name for p in (out / "cat").glob("*.png")) == [f"{i:05d}.png" for i in range(5)]
    assert (
        cli_main([*infer[:-5], "--out", str(tmp_path / "refused"), "--model", "stcn", "--device", "cpu"]) == 2
    )
    assert not (tmp_path / "refused").exists()
