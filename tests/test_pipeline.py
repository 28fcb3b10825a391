"""End to end: the two-shot pipeline and the demo on tiny generated data (CPU, < 2 min)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import written_j_and_f
from twoshot.cli import main
from twoshot.config import Config, load_config
from twoshot.data.budget import load_budget, make_budget
from twoshot.data.masks import read_mask
from twoshot.data.readers import open_dataset
from twoshot.data.synth import generate_dataset
from twoshot.demo import DemoScale, run_demo
from twoshot.errors import UserError
from twoshot.inference.predictor import load_for_inference
from twoshot.model import load_model
from twoshot.pipeline import run_pipeline
from twoshot.report import ModelScore, PipelineReport, naive_title

MODELS = ["static", "phase1", "phase2", "naive", "full"]


def _config(data: Path, out: Path, baselines: list[str]) -> Config:
    config = load_config(
        "tiny",
        overrides=[
            "static.iterations=6",
            "static.lr_steps=[]",
            "static.batch_size=2",
            "static.num_workers=0",
            "static.crop_size=48",
            "main.iterations=8",
            "main.lr_steps=[]",
            "main.batch_size=2",
            "main.num_workers=0",
            "main.crop_size=48",
            "main.save_every=4",
            "static.save_every=4",
            "main.log_every=2",
            "static.log_every=2",
            "twoshot.end_warm=3",
            "twoshot.phase2_start_update=4",
        ],
    )
    config.pipeline.data = str(data)
    config.pipeline.out = str(out)
    config.pipeline.static_data = str(data / "static")
    config.pipeline.baselines = baselines
    config.pipeline.device = "cpu"
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(
        root, videos=4, frames=8, size=(48, 48), objects=(1, 2), seed=3, val_videos=2, static_images=8
    )
    return root


def test_pipeline_runs_every_stage_then_skips_and_resumes(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    logs: list[str] = []
    report = run_pipeline(_config(dataset, out, ["naive", "full"]), log=logs.append, progress=False)
    assert [m.name for m in report.models] == MODELS
    # DAVIS scores objects 1..max label of each validation video's first annotation
    firsts = {s.name: read_mask(s.mask_paths[0])[0] for s in open_dataset("davis", dataset, "val")}
    expected_objects = sorted(
        f"{name}_{o}" for name, first in firsts.items() for o in range(1, int(first.max()) + 1)
    )
    for model in report.models:
        # 8 iterations test the plumbing, not learning (their models score no better than an
        # untrained one); that training learns is checked in test_learning.py. The report's
        # J&F is that of the predictions written for the model.
        assert model.j_and_f == pytest.approx(written_j_and_f(out / "predictions" / model.name, dataset))
        assert model.j_and_f == pytest.approx((model.j_mean + model.f_mean) / 2)
        # objects weigh equally: the global J&F is the mean of the per-object ones
        assert sorted(model.objects) == expected_objects
        assert model.j_and_f == pytest.approx(sum(model.objects.values()) / len(model.objects))
    assert report.gap_error() is not None
    assert report.labeled_frames == 8 and report.total_frames == 32
    assert report.score("full").labeled_share == 1.0 and report.score("phase2").labeled_share == 0.25
    assert report.bank_j_and_f is not None
    budget = load_budget(out / "budget.json")
    assert sorted(budget) == [f"train{i:04d}" for i in range(4)]
    assert all(len(frames) == 2 for frames in budget.values())
    manifest = json.loads((out / "bank" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["videos"]) == 4
    saved = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in saved["models"]] == MODELS
    assert "| two-shot (phase 2 on the bank) |" in (out / "report.md").read_text()
    # two labeled frames in every video: the baseline is named by that count
    assert "| naive 2-shot (labeled frames only) |" in (out / "report.md").read_text()

    # A second run finds every step complete, also with settings that only change how it
    # runs (logging, the evaluation's workers).
    logs.clear()
    config = _config(dataset, out, ["naive", "full"])
    config.main.log_every, config.pipeline.eval_workers = 5, 2
    again = run_pipeline(config, log=logs.append, progress=False)
    assert not any(line.endswith("running") for line in logs), logs
    assert [m.j_and_f for m in again.models] == [m.j_and_f for m in report.models]

    # Another configuration in the same folder would report the old models as its own.
    saved = (out / "config.json").read_text()
    config = _config(dataset, out, ["naive", "full"])
    config.main.iterations, config.model.output_stride = 9, 8
    with pytest.raises(UserError) as error:
        run_pipeline(config, log=lambda _: None, progress=False)
    assert str(error.value).startswith(f"{out / 'config.json'}: {out} holds a run with another configuration")
    assert "model.output_stride: 16 -> 8; main.iterations: 8 -> 9" in str(error.value)
    assert (out / "config.json").read_text() == saved

    # Killed after phase 2's last checkpoint: the rerun resumes it and gets the same weights.
    weights = torch.load(out / "phase2" / "final.pth", weights_only=True)
    (out / "phase2" / "final.pth").unlink()
    logs.clear()
    run_pipeline(_config(dataset, out, ["naive", "full"]), log=logs.append, progress=False)
    assert "[phase2] running" in logs and "[phase1] running" not in logs
    resumed = torch.load(out / "phase2" / "final.pth", weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_self_training_rounds_run_resume_and_report(dataset: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    config = _config(dataset, out, [])
    config.pipeline.static_data = None  # phase 1 from scratch: the rounds are what is tested
    config.twoshot.rounds = 2
    logs: list[str] = []
    report = run_pipeline(config, log=logs.append, progress=False)
    assert [m.name for m in report.models] == ["phase1", "phase2", "round-2"]
    assert report.score("round-2").labeled_share == 0.25
    assert report.score("round-2").train_seconds is not None
    # Each round's bank is scored; round 1's is the paper's bank line.
    assert len(report.round_banks) == 2 and report.round_banks[0] == report.bank_j_and_f
    assert "J&F " in (out / "report.md").read_text() and "(round 2)." in (out / "report.md").read_text()
    # Round 2's bank comes from round 1's phase-2 model, in its own folder; round 1's stays.
    manifest_path = out / "round-2" / "bank" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["checkpoint"]["path"] == str(out / "phase2" / "final.pth")
    assert json.loads((out / "bank" / "manifest.json").read_text())["checkpoint"]["path"] == str(
        out / "phase1" / "final.pth"
    )
    weights = torch.load(out / "round-2" / "phase2" / "final.pth", weights_only=True)
    png = (out / "round-2" / "bank" / "train0001" / "00003.png").read_bytes()

    # Killed in round 2's bank (one video unwritten, nothing after it): the rerun continues
    # there and ends with the same bank and weights.
    shutil.rmtree(out / "round-2" / "phase2")
    shutil.rmtree(out / "round-2" / "bank" / "train0001")
    del manifest["videos"]["train0001"]
    manifest["status"] = "in progress"
    manifest_path.write_text(json.dumps(manifest))
    for stale in ("eval/round-2.json", "eval/round-2-bank.json", "report.json"):
        (out / stale).unlink()
    shutil.rmtree(out / "predictions" / "round-2")
    logs.clear()
    again = run_pipeline(config, log=logs.append, progress=False)
    ran = [line for line in logs if line.endswith("running")]
    assert ran == ["[round-2 bank] running", "[round-2] running", "[infer:round-2] running"], logs
    assert (out / "round-2" / "bank" / "train0001" / "00003.png").read_bytes() == png
    resumed = torch.load(out / "round-2" / "phase2" / "final.pth", weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert again.round_banks == report.round_banks

    # Killed after round 2's last checkpoint: the rerun resumes that training only.
    (out / "round-2" / "phase2" / "final.pth").unlink()
    logs.clear()
    run_pipeline(config, log=logs.append, progress=False)
    assert [line for line in logs if line.endswith("running")] == ["[round-2] running"], logs
    resumed = torch.load(out / "round-2" / "phase2" / "final.pth", weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_rounds_below_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="config key 'twoshot.rounds': must be at least 1"):
        load_config("tiny", overrides=["twoshot.rounds=0"])
    assert main(["pipeline", "--preset", "tiny", "--data", "nowhere", "twoshot.rounds=-1"]) == 2
    assert "'twoshot.rounds': must be at least 1" in capsys.readouterr().err


def test_pipeline_never_needs_unlabeled_annotations(dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    budget = make_budget(open_dataset("davis", data, "train"), shots=2, strategy="uniform")
    (tmp_path / "budget.json").write_text(json.dumps(budget))
    for video, frames in budget.items():
        keep = {Path(frame).stem for frame in frames}
        for png in (data / "Annotations" / "480p" / video).glob("*.png"):
            if png.stem not in keep:
                png.unlink()
    config = _config(data, tmp_path / "run", ["naive", "full"])
    config.pipeline.budget = str(tmp_path / "budget.json")
    logs: list[str] = []
    report = run_pipeline(config, log=logs.append, progress=False)
    assert [m.name for m in report.models] == ["static", "phase1", "phase2", "naive"]
    assert any("[full] skipped" in line for line in logs)
    assert report.bank_j_and_f is None


def test_pipeline_bad_budget_stops_before_training(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "budget.json").write_text(json.dumps({"no-such-video": ["00000.jpg"]}))
    config = _config(dataset, tmp_path / "run", [])
    config.pipeline.budget = str(tmp_path / "budget.json")
    with pytest.raises(UserError, match="no-such-video"):
        run_pipeline(config, log=lambda _: None, progress=False)
    assert not (tmp_path / "run" / "phase1").exists()


def test_pipeline_cli_reports_unknown_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--preset", "tiny", "pipeline.nope=1"]) == 2
    assert "unknown config key 'pipeline.nope'" in capsys.readouterr().err
    assert main(["pipeline", "--preset", "tiny"]) == 2
    assert "pipeline.data is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.output_stride=4", "'model.output_stride': must be 8 or 16, got 4"),
        ("model.key_block=wide", "'model.key_block': 'wide' is not a ResNet block"),
        ("model.value_layers=[2,2]", "'model.value_layers': [2, 2] must give 3 stages"),
    ],
)
def test_model_config_that_builds_no_network_is_refused(
    override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pipeline", "--preset", "tiny", "--data", "nowhere", override]) == 2
    assert message in capsys.readouterr().err


def test_demo_writes_report_plot_and_overlays(tmp_path: Path) -> None:
    scale = DemoScale(
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
    report, pictures = run_demo(
        tmp_path / "demo", scale=scale, device="cpu", log=lambda _: None, progress=False
    )
    assert [m.name for m in report.models] == MODELS
    names = sorted(p.name for p in pictures)
    assert names == ["jf.png", "val0000.mp4", "val0000.png", "val0001.mp4", "val0001.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in pictures)
    # The demo matches at 1/8; its models reload that way from the config saved beside them.
    run = tmp_path / "demo" / "run"
    assert json.loads((run / "config.json").read_text())["model"]["output_stride"] == 8
    assert load_model(run / "phase2" / "final.pth").config.output_stride == 8
    # It segments at twice the frame size, and `twoshot infer` on its weights does too.
    assert json.loads((run / "config.json").read_text())["inference"]["size"] == 96
    assert load_for_inference(run / "phase2" / "final.pth")[1].size == 96
    # The bank's value against the labels a user has without it.
    value = (run / "bank_value.md").read_text()
    assert "pseudo-label bank" in value and "copy of the nearest labeled mask" in value
    assert "static model, forward" in value and "Labeled by hand: 6 of 18 frames" in value


def _report(objects: dict[str, dict[str, float]] | None = None, **scores: float) -> PipelineReport:
    report = PipelineReport(out="run", budget="budget.json", labeled_frames=2, total_frames=24)
    for name, value in scores.items():
        report.models.append(
            ModelScore(name, name, value, value, value, 0.1, None, (objects or {}).get(name, {}))
        )
    return report


def test_naive_title_names_the_shots_only_when_every_video_has_as_many() -> None:
    assert naive_title({"a": ["0.jpg", "5.jpg", "9.jpg"], "b": ["1.jpg", "2.jpg", "3.jpg"]}) == (
        "naive 3-shot (labeled frames only)"
    )
    assert naive_title({"a": ["0.jpg"], "b": ["1.jpg", "2.jpg"]}) == "naive k-shot (labeled frames only)"


def test_paired_standard_error_by_hand() -> None:
    from twoshot.evaluate.standard_errors import paired_standard_error

    naive = {"a_1": 0.4, "a_2": 0.5, "b_1": 0.6, "only_naive_1": 0.9}
    full = {"a_1": 0.5, "a_2": 0.5, "b_1": 0.8}
    # differences 0.1, 0.0, 0.2: mean 0.1, sample std 0.1, standard error 0.1 / sqrt(3)
    assert paired_standard_error(naive, full) == pytest.approx(0.1 / 3**0.5)
    assert paired_standard_error({"a_1": 0.4}, {"a_1": 0.6}) is None


def test_model_standard_error_by_hand() -> None:
    # objects 0.2, 0.4, 0.6: sample std 0.2, standard error 0.2 / sqrt(3)
    score = ModelScore("naive", "naive", 0.4, 0.4, 0.4, 0.1, None, {"a_1": 0.2, "a_2": 0.4, "b_1": 0.6})
    assert score.standard_error() == pytest.approx(0.2 / 3**0.5)
    assert ModelScore("full", "full", 0.4, 0.4, 0.4, 1.0, None, {"a_1": 0.4}).standard_error() is None


def test_a_gap_within_its_standard_error_is_not_measured() -> None:
    from twoshot.report import format_report

    # naive 0.40 and full 0.42 on average; per-object differences +0.12 and -0.08: the gap
    # 0.02 has a standard error of 0.1 (sample std 0.1414 / sqrt 2), so 2 errors = 0.2.
    noisy = {"naive": {"v_1": 0.30, "v_2": 0.50}, "full": {"v_1": 0.42, "v_2": 0.42}}
    report = _report(noisy, naive=0.40, full=0.42, phase2=0.41)
    assert report.gap_error() == pytest.approx(0.1)
    assert not report.gap_is_measurable() and report.gap_recovered() is None
    text = format_report(report)
    assert "Full supervision scores 2.0 ± 10.0 J&F above naive training" in text
    assert "needs a gap of at least 1 J&F and 2 standard errors (20.0 J&F)" in text
    # the same means with consistent per-object differences: measurable, share reported
    steady = {"naive": {"v_1": 0.30, "v_2": 0.50}, "full": {"v_1": 0.32, "v_2": 0.52}}
    report = _report(steady, naive=0.40, full=0.42, phase2=0.41)
    assert report.gap_error() == pytest.approx(0.0, abs=1e-9)
    assert report.gap_recovered() == pytest.approx(0.5)
    assert (
        "recovers 50% of the gap between naive training and full supervision (2.0 ± 0.0 J&F)"
        in format_report(report)
    )


def test_gap_recovered_and_its_note() -> None:
    from twoshot.report import format_report

    report = _report(naive=0.40, full=0.50, phase2=0.48)
    assert report.gap_recovered() == pytest.approx(0.8)
    assert "recovers 80% of the gap" in format_report(report)
    # Full supervision below naive training, or less than 1 J&F above it: no ratio, and the
    # report says why with the gap it measured.
    for full, shown in ((0.35, "5.0 J&F below"), (0.406, "0.6 J&F above")):
        report = _report(naive=0.40, full=full, phase2=0.30)
        assert report.gap_recovered() is None
        text = format_report(report)
        assert "Two-shot recovers" not in text and f"Full supervision scores {shown} naive" in text
        assert "needs a gap of at least 1 J&F." in text
    assert _report(naive=0.40, full=0.411, phase2=0.41).gap_recovered() == pytest.approx(10 / 11)
    assert _report(naive=0.4, phase2=0.5).gap_recovered() is None


def _run(naive: dict[str, float], full: dict[str, float], phase2: float | None = None) -> PipelineReport:
    """A report whose naive and full J&F are the means of their per-object scores."""
    scores = {"naive": sum(naive.values()) / len(naive), "full": sum(full.values()) / len(full)}
    if phase2 is not None:
        scores["phase2"] = phase2
    return _report({"naive": naive, "full": full}, **scores)


def test_gap_over_training_seeds_pools_runs_by_hand() -> None:
    from twoshot.report import estimate_gap

    # Naive 0.40 and 0.44, full 0.46 and 0.48: gap 0.05 on the means. Every object gains
    # 0.05 on the per-object means (objects' error 0); the runs' gaps 0.06 and 0.04 have
    # sample std 0.01414, so their standard error is 0.01. Two-shot 0.43 and 0.47: mean
    # 0.45 recovers (0.45 - 0.42) / 0.05 = 60%.
    a = _run({"v_1": 0.30, "v_2": 0.50}, {"v_1": 0.36, "v_2": 0.56}, phase2=0.43)
    b = _run({"v_1": 0.34, "v_2": 0.54}, {"v_1": 0.38, "v_2": 0.58}, phase2=0.47)
    estimate = estimate_gap([a, b])
    assert (estimate.gap, estimate.error, estimate.runs) == (pytest.approx(0.05), pytest.approx(0.01), 2)
    assert estimate.recovered == pytest.approx(0.6)
    # One run alone is that run's own gap, as its report says.
    assert estimate_gap([a]).gap == pytest.approx(a.gap()) and estimate_gap([a]).recovered == pytest.approx(
        0.5
    )
    # Runs whose gaps are 0.10 and 0.00: the same mean gap, but a standard error of 0.05, so
    # two errors (0.10) exceed it and no share is reported.
    c = _run({"v_1": 0.30, "v_2": 0.50}, {"v_1": 0.40, "v_2": 0.60}, phase2=0.45)
    d = _run({"v_1": 0.30, "v_2": 0.50}, {"v_1": 0.30, "v_2": 0.50}, phase2=0.45)
    noisy = estimate_gap([c, d])
    assert noisy.gap == pytest.approx(0.05) and noisy.error == pytest.approx(0.05)
    assert not noisy.measurable and noisy.recovered is None


def test_gap_error_adds_objects_and_seeds_in_quadrature() -> None:
    from twoshot.report import estimate_gap, mean_object_scores

    # Full's per-object means 0.44, 0.44 against naive's 0.30, 0.50: differences 0.14 and
    # -0.06, standard error 0.1. The runs' gaps 0.02 and 0.06: standard error 0.02.
    a = _run({"v_1": 0.30, "v_2": 0.50}, {"v_1": 0.42, "v_2": 0.42})
    b = _run({"v_1": 0.30, "v_2": 0.50}, {"v_1": 0.46, "v_2": 0.46})
    assert estimate_gap([a, b]).error == pytest.approx((0.1**2 + 0.02**2) ** 0.5)
    assert mean_object_scores([a.score("full"), b.score("full")]) == pytest.approx({"v_1": 0.44, "v_2": 0.44})
    # Only objects every run scored are averaged; a run without both baselines is left out.
    partial = ModelScore("full", "full", 0.5, 0.5, 0.5, 1.0, None, {"v_1": 0.5})
    assert mean_object_scores([a.score("full"), partial]) == pytest.approx({"v_1": 0.46})
    assert estimate_gap([a, _report(naive=0.4)]).runs == 1
    assert estimate_gap([_report(naive=0.4)]) == estimate_gap([])


def test_config_differences_by_key() -> None:
    from twoshot.config import config_differences

    saved = {"model": {"output_stride": 16, "layers": [3, 4]}, "main": {"lr": 1e-3, "log_every": 10}}
    current = {
        "model": {"output_stride": 8, "layers": (3, 4), "new_key": 1},
        "main": {"lr": 1e-3, "log_every": 20},
        "added": {"x": 1},
    }
    assert config_differences(saved, current) == ["model.output_stride: 16 -> 8", "main.log_every: 10 -> 20"]
    assert config_differences(saved, current, frozenset({"main.log_every"})) == [
        "model.output_stride: 16 -> 8"
    ]
    assert config_differences(current, current) == []


def test_describe_differences_names_the_first_six() -> None:
    from twoshot.config import describe_differences

    changed = [f"k{i}: {i} -> {i + 1}" for i in range(8)]
    assert describe_differences(changed) == "; ".join(changed[:6]) + "; and 2 more"
    assert describe_differences(changed[:2]) == "k0: 0 -> 1; k1: 1 -> 2"
