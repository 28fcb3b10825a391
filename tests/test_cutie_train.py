"""Cutie on the shared trainer: its point loss (by hand, fixed-seed sampling, ignored pixels),
its optimiser groups, a step of every stage, an exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import ToyClips, cutie_toy_config
from twoshot.config import TwoShotConfig
from twoshot.data.batch import ClipBatch
from twoshot.model.cutie.spec import CutieTrainSettings
from twoshot.model.registry import build_model
from twoshot.train.forward import ClipOutput
from twoshot.train.objectives import CutieObjective, STCNObjective, objective_for
from twoshot.train.phases import Phase1Regime, Phase2Regime
from twoshot.train.point_loss import (
    PointSampling,
    cutie_clip_loss,
    one_hot_targets,
    point_sample,
    point_terms,
    sample_points,
    uncertainty,
)
from twoshot.train.regimes import SupervisedRegime
from twoshot.train.trainer import Trainer, train


def test_point_terms_by_hand() -> None:
    # One frame, two points, background + one object. Point 0: logits (0, ln 3) -> p = (1/4,
    # 3/4), label object; point 1: logits (0, 0) -> (1/2, 1/2), label background.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    labels = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    ce, dice = point_terms(logits, labels)
    assert ce.item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, rel=1e-6)
    # dice over the object: p = (3/4, 1/2), g = (1, 0): 1 - (2 * 3/4 + 1) / (5/4 + 1 + 1)
    assert dice.item() == pytest.approx(1 - 2.5 / 3.25, rel=1e-6)

    # Point 1 half ignored: its label mass halves and CE is normalised by the weights (1.5);
    # the prediction at point 1 counts half in dice.
    half = torch.tensor([[[0.0, 0.5], [1.0, 0.0]]])
    ce, dice = point_terms(logits, half, torch.tensor([[[1.0, 0.5]]]))
    assert ce.item() == pytest.approx((-math.log(0.75) - 0.5 * math.log(0.5)) / 1.5, rel=1e-6)
    assert dice.item() == pytest.approx(1 - 2.5 / (0.75 + 0.25 + 1 + 1), rel=1e-6)


def test_uncertainty_and_point_reads() -> None:
    two = torch.tensor([[[0.0, 0.0], [2.0, -0.5]]])  # [1, 2, 2]
    assert torch.equal(uncertainty(two), torch.tensor([[-2.0, -0.5]]))
    three = torch.tensor([[[1.0], [4.0], [2.0]]])
    assert torch.equal(uncertainty(three), torch.tensor([[-2.0]]))
    # A 2x2 map read at pixel centres ((0.25, 0.25) is the top-left one) and at the middle.
    grid = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.5]]])
    assert torch.allclose(point_sample(grid, coords), torch.tensor([[[1.0, 2.0, 2.5]]]))


def test_point_sampling_with_a_fixed_seed() -> None:
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sampling = PointSampling(num_points=10, oversample_ratio=3.0, importance_ratio=0.7)
    coords = sample_points(logits, sampling, generator=torch.Generator().manual_seed(7))
    # The same draws by hand: 30 candidates, the 7 most uncertain, then 3 uniform points.
    again = torch.Generator().manual_seed(7)
    candidates = torch.rand(2, 30, 2, generator=again)
    score = uncertainty(point_sample(logits, candidates))
    top = torch.topk(score, 7, dim=1).indices
    expected = torch.cat(
        [torch.stack([candidates[n, top[n]] for n in range(2)]), torch.rand(2, 3, 2, generator=again)], dim=1
    )
    assert torch.equal(coords, expected)

    # Candidates wholly on ignored pixels are never chosen for uncertainty.
    valid = torch.ones(2, 1, 8, 8)
    valid[:, :, :, :4] = 0  # left half ignored
    coords = sample_points(logits, sampling, valid, torch.Generator().manual_seed(7))
    assert (point_sample(valid, coords[:, :7], border=True) > 0).all()


def test_one_hot_targets_zero_where_ignored() -> None:
    cls = torch.tensor([[[0, 1], [2, -1]]])
    hot, valid = one_hot_targets(cls, 3)
    assert hot[0, :, 1, 1].sum() == 0 and hot[0, 2, 1, 0] == 1 and hot[0, 0, 0, 0] == 1
    assert valid is not None and valid[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert one_hot_targets(cls.clamp(min=0), 3)[1] is None


def _loss_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 3, 64, 64, generator=g)
    aux = {
        "sensory": torch.randn(2, 2, 3, 4, 4, generator=g),
        "query": torch.randn(2, 2, 3, 3, 4, 4, generator=g),
    }
    cls = torch.randint(0, 3, (2, 3, 64, 64), generator=g)
    cls[:, 2, :, :48] = -1  # the teacher left the left three quarters of frame 2 unlabeled
    return logits, aux, cls, torch.ones(2, 2)


def test_ignored_pixels_reach_every_loss_term() -> None:
    logits, aux, cls, selector = _loss_inputs()
    settings = CutieTrainSettings(num_points=300)
    seeds = torch.tensor([11, 12])
    base = cutie_clip_loss(logits, aux, cls, selector, settings, seeds)
    assert set(base.terms) == {
        "ce",
        "dice",
        "sensory_ce",
        "sensory_dice",
        *(f"query_{t}_l{i}" for t in ("ce", "dice") for i in range(3)),
    }

    # Anything predicted deep inside the ignored region (frame 2 is index 1 of the predictions;
    # aux cells 0-1 of 4 are read only by points left of pixel 40) changes no term.
    changed_logits, changed_aux = logits.clone(), {k: v.clone() for k, v in aux.items()}
    changed_logits[:, 1, :, :, :46] = 10 * torch.randn(2, 3, 64, 46)
    changed_aux["sensory"][:, 1, :, :, :2] = 7.0
    changed_aux["query"][:, 1, :, :, :, :2] = -7.0
    same = cutie_clip_loss(changed_logits, changed_aux, cls, selector, settings, seeds)
    for name, value in base.terms.items():
        assert torch.equal(value, same.terms[name]), name

    # The same change where frame 2 is labeled changes every term.
    moved_logits, moved_aux = logits.clone(), {k: v.clone() for k, v in aux.items()}
    moved_logits[:, 1, :, :, 50:] = 10 * torch.randn(2, 3, 64, 14)
    moved_aux["sensory"][:, 1, :, :, 3:] = 7.0
    moved_aux["query"][:, 1, :, :, :, 3:] = -7.0
    other = cutie_clip_loss(moved_logits, moved_aux, cls, selector, settings, seeds)
    for name, value in base.terms.items():
        assert not torch.equal(value, other.terms[name]), name

    # Gradients: none reach predictions in the ignored region.
    logits.requires_grad_(True)
    for value in aux.values():
        value.requires_grad_(True)
    cutie_clip_loss(logits, aux, cls, selector, settings, seeds).total.backward()
    assert logits.grad is not None and logits.grad[:, 1, :, :, :46].abs().max() == 0
    assert logits.grad[:, 0].abs().sum() > 0
    for name, value in aux.items():
        assert value.grad is not None
        assert value.grad[:, 1, ..., :2].abs().max() == 0, name
        assert value.grad[:, 0].abs().sum() > 0, name


def test_a_fully_ignored_frame_adds_nothing() -> None:
    logits, aux, cls, selector = _loss_inputs()
    cls[:, 2] = -1
    settings = CutieTrainSettings(num_points=100)
    loss = cutie_clip_loss(logits.requires_grad_(True), aux, cls, selector, settings, torch.tensor([1, 2]))
    assert torch.isfinite(loss.total)
    loss.total.backward()
    assert logits.grad is not None and logits.grad[:, 1].abs().max() == 0


def test_objectives_by_model_kind() -> None:
    # cutie-tiny trains its pixel encoder at the full rate; the reference's 0.1x is set here.
    config = cutie_toy_config("main.cutie.backbone_lr_ratio=0.1")
    assert isinstance(objective_for("stcn", config.main), STCNObjective)
    objective = objective_for("cutie", config.main)
    assert isinstance(objective, CutieObjective)
    model = build_model(config.model)
    groups = objective.optimizer(model, use_amp=False).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    backbone, embeddings, others = ([names[id(p)] for p in g["params"]] for g in groups)
    assert backbone and all(n.startswith("pixel_encoder.") for n in backbone)
    assert "object_transformer.query_init.weight" in embeddings
    assert "object_transformer.query_emb.weight" in embeddings
    assert len(backbone) + len(embeddings) + len(others) == len(list(model.parameters()))
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-3])
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0, 1e-3]


def _run(config: Any, out: Path, regime: Any = None, data: Any = None) -> Trainer:
    trainer = Trainer(config, "main", data or ToyClips(n=4), out, regime=regime, device="cpu", progress=False)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def test_one_step_of_every_stage(tmp_path: Path) -> None:
    start = build_model(cutie_toy_config().model)
    settings = TwoShotConfig(end_warm=0, phase2_start_update=0, use_teacher=True)
    runs = {
        "static": (None, ToyClips(n=4)),
        "main": (None, ToyClips(n=4)),
        # Iteration 1 warms up on labeled clips; iteration 2 trains on a teacher-labeled one.
        "phase1": (Phase1Regime(ToyClips(n=4), ToyClips(n=4, labeled_frames=1), settings), None),
        "phase2": (Phase2Regime(settings), ToyClips(n=4)),
    }
    for name, (regime, data) in runs.items():
        stage = "static" if name == "static" else "main"
        config = cutie_toy_config(
            f"{stage}.iterations=2", f"{stage}.lr_steps=[]", f"{stage}.batch_size=2", f"{stage}.num_workers=0"
        )
        config.static.cutie.num_points = 256
        trainer = Trainer(config, stage, data, tmp_path / name, regime=regime, device="cpu", progress=False)
        try:
            trainer.run()
        finally:
            trainer.close()
        assert not torch.equal(
            trainer.model.state_dict()["mask_decoder.pred.weight"],
            start.state_dict()["mask_decoder.pred.weight"],
        ), name
        if name == "phase1":
            assert isinstance(regime, Phase1Regime) and regime.teacher is not None


class RandomIgnore(SupervisedRegime):
    """Ignores a random fifth of the pixels (the global generator must survive a resume)."""

    name = "random-ignore"

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        return batch.replace(cls_gt=batch.cls_gt.masked_fill(torch.rand(batch.cls_gt.shape) < 0.2, -1))


class Crash(Exception):
    """Stands in for a killed job."""


class CrashAt(RandomIgnore):
    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, model: torch.nn.Module, it: int) -> None:
        if it == self.at:
            raise Crash(it)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    # 5-frame clips: from frame 4 on the reference frames are a random pick.
    config = cutie_toy_config("main.iterations=5", "main.save_every=3", "main.lr_steps=[2]")
    data = lambda: ToyClips(n=3, frames=5)  # noqa: E731
    whole = train(
        config, "main", data(), tmp_path / "whole", regime=RandomIgnore(), device="cpu", progress=False
    )
    out = tmp_path / "parts"
    with pytest.raises(Crash):
        train(config, "main", data(), out, regime=CrashAt(3), device="cpu", progress=False)
    resumed = train(
        config, "main", data(), out, resume=True, regime=RandomIgnore(), device="cpu", progress=False
    )
    expected, actual = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_window_sampling_of_long_clips() -> None:
    from twoshot.data.sampling import sample_window_frames

    rng = np.random.default_rng(0)
    for _ in range(200):
        clip = sample_window_frames(rng, 30, 8, 3)
        assert len(set(clip)) == 8 and all(0 <= f < 30 for f in clip)
        ordered = sorted(clip)
        # every frame is within the skip of an earlier drawn one: gaps of sorted frames <= 3
        assert all(b - a <= 3 for a, b in zip(ordered, ordered[1:]))
        assert clip in (ordered, ordered[::-1])
    with pytest.raises(ValueError):
        sample_window_frames(rng, 5, 8, 3)


def test_eight_frame_clips_train_cutie(tmp_path: Path) -> None:
    from twoshot.data.fixtures import make_davis
    from twoshot.train.recipes import build_stage_dataset

    root = make_davis(tmp_path / "davis", {"a": 12, "b": 10, "short": 6}, size=(40, 48)).root
    config = cutie_toy_config(
        "main.num_frames=8", "main.crop_size=32", "main.iterations=1", "main.lr_steps=[]"
    )
    with pytest.warns(UserWarning, match="short"):
        dataset = build_stage_dataset("main", config, root, "davis", "train")
    sample = dataset[0]
    assert sample.rgb.shape[1] == 8 and len(set(sample.frames[0].tolist())) == 8
    _run(config, tmp_path / "run", data=dataset)


@pytest.mark.parametrize("key", ["main.cutie.num_points=64", "static.cutie.num_ref_frames=1"])
def test_a_cutie_key_with_stcn_is_refused(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    from twoshot.cli import main
    from twoshot.config import load_config
    from twoshot.errors import UserError

    with pytest.raises(UserError, match=f"config key '{key.split('=')[0]}' is a cutie setting"):
        load_config("tiny", overrides=[key])
    assert load_config("cutie-tiny", overrides=[key]).model.kind == "cutie"
    assert (
        main(["train", "--stage", "main", "--data", "nowhere", "--out", "nowhere", "--preset", "stcn", key])
        == 2
    )
    assert "is a cutie setting, but model.kind is 'stcn'" in capsys.readouterr().err


def test_bad_cutie_training_settings_are_refused(tmp_path: Path) -> None:
    from twoshot.errors import UserError

    with pytest.raises(
        UserError, match=r"config main.cutie.importance_ratio must be in \[0, 1\] \(got 1.5\)"
    ):
        cutie_toy_config("main.cutie.importance_ratio=1.5")  # refused when the config loads
    config = cutie_toy_config()
    config.main.cutie.importance_ratio = 1.5  # a config built in code: the trainer checks it too
    with pytest.raises(UserError, match=r"main.cutie.importance_ratio"):
        Trainer(config, "main", ToyClips(), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_cutie_presets_train_on_three_objects_and_bad_counts_are_refused() -> None:
    from twoshot.config import load_config
    from twoshot.errors import UserError

    for preset in ("cutie-base", "cutie-small"):
        config = load_config(preset)
        assert (config.static.num_objects, config.main.num_objects) == (1, 3)  # the reference's
    assert load_config("stcn").main.num_objects == load_config("tiny").static.num_objects == 2
    for key in ("main.num_objects=0", "static.num_objects=-2", "main.num_objects=255"):
        with pytest.raises(UserError, match=f"config key '{key.split('=')[0]}'.* between 1 and 254"):
            load_config("cutie-tiny", overrides=[key])


class Recorder(Phase1Regime):
    """Phase 1 that records what each step's loss receives (object slots and logit channels)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[tuple[list[list[float]], int, bool]] = []

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        prepared = super().prepare_targets(batch, outputs, it)
        unlabeled = ~batch.labeled
        pseudo = bool((prepared.cls_gt[unlabeled] >= 0).any())
        self.seen.append((batch.selector.tolist(), outputs.logits.shape[2], pseudo))
        return prepared


def test_a_cutie_step_on_clips_of_three_objects(tmp_path: Path) -> None:
    from twoshot.data.fixtures import make_davis
    from twoshot.train.recipes import build_recipe

    root = make_davis(tmp_path / "davis", {"a": 9, "b": 8}, size=(48, 48), object_ids=(1, 2, 3)).root
    budget = tmp_path / "budget.json"
    budget.write_text('{"a": ["00001.jpg", "00006.jpg"], "b": ["00000.jpg", "00005.jpg"]}')
    config = cutie_toy_config(
        "main.num_objects=3",
        "main.crop_size=32",
        "main.iterations=2",
        "main.lr_steps=[]",
        "twoshot.end_warm=0",
        "twoshot.labeled_clip_share=0",
        "twoshot.pseudo_threshold=0.34",  # an untrained teacher is never 90% sure
    )
    recipe = build_recipe("phase1", config, root, "davis", "train", budget=budget)
    assert isinstance(recipe.regime, Phase1Regime)
    clips = recipe.regime.clip_dataset
    assert clips.num_objects == 3 and any(clips[i].selector.sum() == 3 for i in range(len(clips)))
    regime = Recorder(recipe.regime.warmup_dataset, clips, config.twoshot)
    start = build_model(config.model).state_dict()["mask_decoder.pred.weight"]
    trainer = _run(config, tmp_path / "run", regime=regime, data=None)
    # Iteration 1: labeled-only clips; iteration 2: teacher labels on the unlabeled frames.
    assert [channels for _, channels, _ in regime.seen] == [4, 4]
    assert all(len(row) == 3 for selector, _, _ in regime.seen for row in selector)
    assert regime.seen[1][2]  # some unlabeled pixel got a label from the teacher
    assert not torch.equal(trainer.model.state_dict()["mask_decoder.pred.weight"], start)


def test_slots_no_clip_fills_are_not_run() -> None:
    # A batch whose clips hold at most 2 objects in 3 slots is run on 2 slots, as the
    # reference does: the outputs equal those of the same clips given 2 slots, and the third
    # slot comes back with probability 0 (and the aggregation's logit of probability 0).
    from twoshot.model.cutie.network import EMPTY_SLOT_LOGIT

    torch.manual_seed(0)
    model = build_model(cutie_toy_config().model).eval()
    rgb = torch.randn(2, 3, 3, 32, 32)
    masks = torch.zeros(2, 3, 32, 32)
    masks[0, 0, 4:12, 4:14] = 1
    masks[0, 1, 18:28, 10:20] = 1
    masks[1, 0, 8:20, 8:24] = 1
    selector = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        torch.manual_seed(1)
        logits, probs, aux = model.training_forward(rgb, masks, selector)
        torch.manual_seed(1)
        logits2, probs2, aux2 = model.training_forward(rgb, masks[:, :2], selector[:, :2])
    assert logits.shape == (2, 2, 4, 32, 32) and aux["query"].shape[2] == 4
    assert torch.equal(logits[:, :, :3], logits2) and torch.equal(probs[:, :, :3], probs2)
    assert all(torch.equal(aux[name][:, :, :3], aux2[name]) for name in ("sensory", "query"))
    assert bool((probs[:, :, 3] == 0).all()) and bool((logits[:, :, 3] == EMPTY_SLOT_LOGIT).all())
    assert bool((aux["sensory"][:, :, 3] == EMPTY_SLOT_LOGIT).all())
