"""``twoshot.teacher``: a given checkpoint of any model replaces phase 1 in the pipeline (the
bank is made with it, phase 2 trains the configured model on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from twoshot.cli import main
from twoshot.config import Config, load_config
from twoshot.data.masks import read_mask
from twoshot.data.synth import generate_dataset
from twoshot.errors import UserError
from twoshot.model import build_model, load_model, save_weights
from twoshot.pipeline import Pipeline, run_pipeline

SCHEDULE = [
    "main.iterations=4",
    "main.lr_steps=[]",
    "main.batch_size=2",
    "main.num_workers=0",
    "main.crop_size=48",
    "twoshot.phase2_start_update=2",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, videos=3, frames=6, size=(48, 48), objects=(1, 2), seed=3, val_videos=1)
    return root


@pytest.fixture(scope="module")
def sam2_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    sam = build_model(load_config("sam2-toy").model)
    with torch.no_grad():  # random weights that see every object: the pseudo labels are not empty
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    path = tmp_path_factory.mktemp("teacher") / "sam2-toy.pth"
    save_weights(sam, path)
    return path


def _config(preset: str, data: Path, out: Path, teacher: Path | str, extra: tuple[str, ...] = ()) -> Config:
    config = load_config(preset, overrides=[*SCHEDULE, *extra, f"twoshot.teacher={teacher}"])
    config.pipeline.data, config.pipeline.out = str(data), str(out)
    config.pipeline.baselines, config.pipeline.device = [], "cpu"
    return config


def _pngs(folder: Path) -> dict[str, list[list[int]]]:
    return {str(p.relative_to(folder)): read_mask(p)[0].tolist() for p in sorted(folder.glob("*/*.png"))}


def test_a_sam2_teacher_makes_the_bank_of_an_stcn_student(
    dataset: Path, sam2_teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    logs: list[str] = []
    report = run_pipeline(_config("tiny", dataset, out, sam2_teacher), log=logs.append, progress=False)
    assert [m.name for m in report.models] == ["phase2"]
    assert "[phase1] running" not in logs and not (out / "phase1").exists()
    assert load_model(out / "phase2" / "final.pth").kind == "stcn"
    # The bank is exactly what `twoshot pseudo-label` makes with the teacher on its own settings.
    alone = tmp_path / "alone"
    argv = ["pseudo-label", "--data", str(dataset), "--budget", str(out / "budget.json")]
    assert main([*argv, "--checkpoint", str(sam2_teacher), "--out", str(alone), "--device", "cpu"]) == 0
    bank = _pngs(out / "bank")
    assert len(bank) == 3 * 6 and bank == _pngs(alone)
    assert any(any(v for row in mask for v in row) for mask in bank.values())  # not all background
    manifest = json.loads((out / "bank" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["checkpoint"]["path"] == str(sam2_teacher)
    # A second run skips every step.
    logs.clear()
    run_pipeline(_config("tiny", dataset, out, sam2_teacher), log=logs.append, progress=False)
    assert not any(line.endswith("running") for line in logs), logs


def test_an_stcn_teacher_makes_the_bank_of_a_cutie_student(dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    teacher = tmp_path / "stcn.pth"
    save_weights(build_model(load_config("tiny").model), teacher)
    cutie = ("main.cutie.num_points=128",)
    report = run_pipeline(_config("cutie-tiny", dataset, tmp_path / "run", teacher, cutie), progress=False)
    assert [m.name for m in report.models] == ["phase2"]
    assert load_model(tmp_path / "run" / "phase2" / "final.pth").kind == "cutie"


def test_a_bad_teacher_is_refused_before_anything_is_written(
    dataset: Path, sam2_teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    unknown = tmp_path / "unknown.pth"
    torch.save({"head.weight": torch.zeros(2)}, unknown)
    missing = tmp_path / "missing.pth"
    expected = {
        missing: f"config key 'twoshot.teacher': {missing}: checkpoint file not found",
        junk: f"config key 'twoshot.teacher': {junk}: not a PyTorch checkpoint",
        unknown: f"config key 'twoshot.teacher': {unknown}: the weights look like no model "
        "(stcn, cutie, sam2); first keys: head.weight",
    }
    for path, message in expected.items():
        with pytest.raises(UserError) as error:
            Pipeline(_config("tiny", dataset, out, path), progress=False).preflight()
        assert str(error.value).startswith(message), str(error.value)
        with pytest.raises(UserError):
            run_pipeline(_config("tiny", dataset, out, path), progress=False)
        assert not out.exists()
    with pytest.raises(UserError, match="config key 'twoshot.teacher': empty"):
        load_config("tiny", overrides=["twoshot.teacher=' '"])
    # A preflight with a good teacher passes; phase 1's end_warm rule does not apply.
    Pipeline(
        _config("tiny", dataset, out, sam2_teacher, ("twoshot.end_warm=10",)), progress=False
    ).preflight()
