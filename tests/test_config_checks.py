"""One check of the whole configuration at load (twoshot.config_checks): every bad setting is
refused with its key named, by ``load_config`` and by ``twoshot pipeline`` before it writes a
file; the pipeline's preflight also opens the splits and the budget before any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twoshot.cli import main as cli_main
from twoshot.config import InferenceConfig, TrainConfig, load_config
from twoshot.config_checks import check_inference_settings, check_train_config
from twoshot.data.fixtures import make_davis
from twoshot.errors import UserError

# (preset, overrides, the key the message names)
BAD_CONFIGS: list[tuple[str, list[str], str]] = [
    ("tiny", ["model.kind=sam3"], "model.kind"),
    ("tiny", ["model.key_block=wide"], "model.key_block"),
    ("tiny", ["model.value_layers=[1, 1]"], "model.value_layers"),
    ("tiny", ["model.output_stride=4"], "model.output_stride"),
    ("tiny", ["model.key_dim=0"], "model.key_dim"),
    ("tiny", ["model.decoder_dims=[]"], "model.decoder_dims"),
    ("tiny", ["model.cutie.num_heads=3"], "model.cutie.num_heads"),
    ("tiny", ["main.cutie.num_points=5"], "main.cutie.num_points"),
    ("tiny", ["main.iterations=0"], "main.iterations"),
    ("tiny", ["static.batch_size=0"], "static.batch_size"),
    ("tiny", ["static.translate=0.5"], "static.translate"),
    ("tiny", ["static.translate=-0.1"], "static.translate"),
    ("tiny", ["main.num_frames=1"], "main.num_frames"),
    ("tiny", ["main.lr=0"], "main.lr"),
    ("tiny", ["main.lr=fast"], "main.lr"),
    ("tiny", ["main.lr_gamma=1.5"], "main.lr_gamma"),
    ("tiny", ["main.loss_top_p=0"], "main.loss_top_p"),
    ("tiny", ["main.loss_end_warm=10"], "main.loss_end_warm"),
    ("tiny", ["main.grad_clip=0"], "main.grad_clip"),
    ("tiny", ["main.lr_steps=[600, 500]"], "main.lr_steps"),
    ("tiny", ["main.num_objects=0"], "main.num_objects"),
    ("tiny", ["main.max_skip_values=[5]"], "main.max_skip_values"),
    ("tiny", ["static.max_skip_fractions=[0.5, 0.1, 0.2, 0.3, 0.4]"], "static.max_skip_fractions"),
    ("tiny", ["main.learning_rate=1"], "main.learning_rate"),
    ("tiny", ["twoshot.rounds=0"], "twoshot.rounds"),
    ("tiny", ["twoshot.end_warm=-1"], "twoshot.end_warm"),
    ("tiny", ["twoshot.ema_alpha=1.5"], "twoshot.ema_alpha"),
    ("tiny", ["twoshot.pseudo_threshold=0"], "twoshot.pseudo_threshold"),
    ("tiny", ["twoshot.refine_threshold=2"], "twoshot.refine_threshold"),
    ("tiny", ["twoshot.labeled_clip_share=-0.1"], "twoshot.labeled_clip_share"),
    ("tiny", ["inference.mem_every=0"], "inference.mem_every"),
    ("tiny", ["inference.top_k=0"], "inference.top_k"),
    ("tiny", ["inference.size=8"], "inference.size"),
    ("tiny", ["inference.max_memory_frames=0"], "inference.max_memory_frames"),
    ("tiny", ["inference.merge=average"], "inference.merge"),
    ("tiny", ["inference.scales=[]"], "inference.scales"),
    ("tiny", ["inference.amp_dtype=float8"], "inference.amp_dtype"),
    ("tiny", ["inference.exact=true", "inference.compile=true"], "inference.exact"),
    ("tiny", ["pipeline.shots=0"], "pipeline.shots"),
    ("tiny", ["pipeline.budget_strategy=best"], "pipeline.budget_strategy"),
    ("tiny", ["pipeline.baselines=[oracle]"], "pipeline.baselines"),
    ("tiny", ["pipeline.eval_workers=0"], "pipeline.eval_workers"),
    ("cutie-tiny", ["model.output_stride=8"], "model.output_stride"),
    ("cutie-tiny", ["model.cutie.num_queries=7"], "model.cutie.num_queries"),
    ("cutie-tiny", ["main.cutie.importance_ratio=1.5"], "main.cutie.importance_ratio"),
    ("cutie-tiny", ["inference.include_last=true"], "inference.include_last"),
    ("cutie-tiny", ["inference.max_memory_frames=1"], "inference.max_memory_frames"),
]


@pytest.mark.parametrize(("preset", "overrides", "key"), BAD_CONFIGS)
def test_bad_configuration_is_refused_at_load_naming_the_key(
    preset: str, overrides: list[str], key: str
) -> None:
    with pytest.raises(UserError) as info:
        load_config(preset, overrides=overrides)
    assert key in str(info.value)


@pytest.mark.parametrize(("preset", "overrides", "key"), BAD_CONFIGS)
def test_pipeline_refuses_a_bad_configuration_before_writing(
    preset: str, overrides: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["pipeline", "--preset", preset, "--data", str(tmp_path / "data"), "--out", str(out), *overrides]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not out.exists()


def test_an_unregistered_model_kind_is_refused_naming_model_kind() -> None:
    """Every check that takes a model kind refuses one no spec registers (a network built
    directly with its own ``kind``), naming the key, rather than skipping the model's checks."""
    from twoshot.inference import PropagationEngine
    from twoshot.model import build_model

    message = "config key 'model.kind': 'nosuch' is not a model; choose one of: stcn, cutie, sam2"
    with pytest.raises(UserError) as inference:
        check_inference_settings(InferenceConfig(), "nosuch")
    with pytest.raises(UserError) as training:
        check_train_config(TrainConfig(), "main", "nosuch")
    network = build_model(load_config("tiny").model)
    network.kind = "nosuch"  # type: ignore[misc]  # an instance of no registered kind
    with pytest.raises(UserError) as engine:
        PropagationEngine(network, InferenceConfig(device="cpu"))
    assert str(inference.value) == str(training.value) == str(engine.value) == message


def test_good_presets_load() -> None:
    for preset in ("stcn", "tiny", "cutie-base", "cutie-small", "cutie-tiny"):
        load_config(preset)


@pytest.fixture()
def davis(tmp_path: Path) -> Path:
    return make_davis(
        tmp_path / "davis", {"bear": 6, "cat": 5}, size=(32, 40), splits={"train": ["bear", "cat"]}
    ).root


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["main.lr_steps=[900]"],
            "config key 'main.lr_steps': every step must be within 1..main.iterations (800)",
        ),
        (
            ["twoshot.end_warm=800"],
            "config key 'twoshot.end_warm': the warm-up must end before main.iterations",
        ),
        (["pipeline.val_split=train", "pipeline.train_split=test"], "test.txt"),
        (["pipeline.val_split=val"], "val.txt"),
        (["pipeline.init=missing.pth"], "pipeline.init: missing.pth: weights file not found"),
        (["pipeline.static_data=nowhere"], "pipeline.static_data: nowhere: folder not found"),
        (["static.lr_steps=[700]", "pipeline.static_data=."], "config key 'static.lr_steps'"),
    ],
)
def test_pipeline_preflight_opens_splits_and_budget_before_any_stage(
    davis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    """The data has no validation split: the pipeline says so before training anything; so
    for a run rule, a missing split file, initial weights or static data."""
    out = tmp_path / "run"
    args = [
        "pipeline",
        "--preset",
        "tiny",
        "--data",
        str(davis),
        "--out",
        str(out),
        "pipeline.val_split=train",
    ]
    assert cli_main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()


def test_pipeline_preflight_refuses_a_budget_that_does_not_fit(
    davis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"dog": ["00000.jpg"]}))
    out = tmp_path / "run"
    args = ["pipeline", "--preset", "tiny", "--data", str(davis), "--out", str(out), "--budget", str(budget)]
    assert cli_main([*args, "pipeline.val_split=train"]) == 2
    err = capsys.readouterr().err
    assert f"{budget}: budget names video(s) not in the dataset: dog" in err and not out.exists()
