"""SAM 2's training recipe on the toy size: the loss against a hand computation, ignored
pixels, the optimiser's groups and schedule, learning on a repeated clip, the command line.
(Equality with the reference's training code: benchmarks/sam2_train_reference.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from twoshot.cli import main as cli_main
from twoshot.config import apply_override, load_config
from twoshot.data.fixtures import make_davis
from twoshot.data.synth import generate_dataset
from twoshot.model import load_model
from twoshot.model.sam2 import Sam2
from twoshot.model.sam2.loss import sam2_clip_loss
from twoshot.model.sam2.objective import Sam2Objective, cosine_factor, sam2_parameter_groups
from twoshot.model.sam2.spec import Sam2TrainSettings
from twoshot.pipeline import run_pipeline
from twoshot.train.forward import ClipOutput

S = 64


def toy_config(size: int = S, **items: object) -> object:
    config = load_config("sam2-toy", overrides=[f"model.sam2.image_size={size}"])
    for key, value in items.items():
        apply_override(config, f"main.{key}={value}")
    return config


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def expected_loss(masks: list, ious: list, scores: list, target: list) -> dict[str, float]:
    """The reference's definition, written out per pixel for one object (N = 1):
    masks[t][m][p] logits, ious[t][m], scores[t], target[t][p] in {0, 1}."""
    totals = {"mask": 0.0, "dice": 0.0, "iou": 0.0, "class": 0.0}
    for t in range(len(masks)):
        focal, dice, iou = [], [], []
        for m in range(len(masks[t])):
            f_sum, inter_soft, p_sum, inter, union = 0.0, 0.0, 0.0, 0, 0
            for x, g in zip(masks[t][m], target[t]):
                p = sigmoid(x)
                ce = -(g * math.log(p) + (1 - g) * math.log(1 - p))
                p_t = p * g + (1 - p) * (1 - g)
                alpha_t = 0.25 * g + 0.75 * (1 - g)
                f_sum += alpha_t * ce * (1 - p_t) ** 2
                inter_soft += p * g
                p_sum += p
                inter += int(x > 0 and g > 0)
                union += int(x > 0 or g > 0)
            focal.append(f_sum / len(target[t]))
            dice.append(1 - (2 * inter_soft + 1) / (p_sum + sum(target[t]) + 1))
            iou.append(abs(ious[t][m] - inter / max(union, 1)))
        best = min(range(len(focal)), key=lambda i: 20 * focal[i] + dice[i])
        present = 1.0 if any(target[t]) else 0.0
        totals["mask"] += focal[best] * present
        totals["dice"] += dice[best] * present
        totals["iou"] += sum(iou) / len(iou) * present
        s = sigmoid(scores[t])
        totals["class"] += -(present * math.log(s) + (1 - present) * math.log(1 - s))
    return totals


def test_loss_terms_match_a_hand_computation() -> None:
    masks = [
        [[3.0, -2.0, 1.0, -4.0]] * 3,
        [[0.5, -1.0, 2.0, -0.3], [-1.5, 2.5, 0.2, 0.1], [4.0, 3.0, -3.0, -2.0]],
        [[-2.0, -1.0, -0.5, -3.0], [1.0, 1.0, 1.0, 1.0], [0.3, -0.2, 0.1, -0.4]],
    ]
    ious = [[1.0] * 3, [0.9, 0.2, 0.6], [0.1, 0.7, 0.4]]
    scores = [10.0, 0.7, -1.2]
    target = [[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    aux = {
        "masks": torch.tensor(masks, dtype=torch.float64).view(1, 3, 1, 3, 2, 2),
        "ious": torch.tensor(ious, dtype=torch.float64).view(1, 3, 1, 3),
        "scores": torch.tensor(scores, dtype=torch.float64).view(1, 3, 1, 1),
    }
    cls_gt = torch.tensor(target).view(1, 3, 2, 2)
    result = sam2_clip_loss(aux, cls_gt, torch.ones(1, 1), Sam2TrainSettings())
    want = expected_loss(masks, ious, scores, target)
    for name, value in want.items():
        assert float(result.terms[name]) == pytest.approx(value, rel=1e-12), name
    total = 20 * want["mask"] + want["dice"] + want["iou"] + want["class"]
    assert float(result.total) == pytest.approx(total, rel=1e-12)
    assert len(result.frames) == 2


def test_ignored_pixels_change_nothing_and_unknown_presence_adds_nothing() -> None:
    torch.manual_seed(0)
    aux = {
        "masks": torch.randn(1, 3, 1, 3, 4, 4, dtype=torch.float64),
        "ious": torch.rand(1, 3, 1, 3, dtype=torch.float64),
        "scores": torch.randn(1, 3, 1, 1, dtype=torch.float64),
    }
    cls_gt = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    cls_gt[0, :, :2, :2] = 1
    cls_gt[0, 1, 2:, 2:] = -1  # ignored corner on frame 1
    cls_gt[0, 2, :2, :2] = -1  # frame 2: the object's region unknown, nothing labeled object
    settings = Sam2TrainSettings()
    base = sam2_clip_loss(aux, cls_gt, torch.ones(1, 1), settings)
    changed = {k: v.clone() for k, v in aux.items()}
    changed["masks"][0, 1, :, :, 2:, 2:] += 5.0
    changed["masks"][0, 2] += torch.randn(1, 3, 4, 4, dtype=torch.float64)
    changed["scores"][0, 2] -= 3.0
    after = sam2_clip_loss(changed, cls_gt, torch.ones(1, 1), settings)
    assert float(after.total) == float(base.total)
    assert float(base.frames[1]) == 0.0  # frame 2 adds nothing
    # Labeled pixels do count.
    changed["masks"][0, 1, :, :, :2, :2] -= 5.0
    assert float(sam2_clip_loss(changed, cls_gt, torch.ones(1, 1), settings).total) != float(base.total)


def test_parameter_groups_follow_the_reference_rules() -> None:
    config = toy_config()
    model = Sam2(config.model)
    lr = config.main.lr
    groups = sam2_parameter_groups(model, config.main)
    of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(of) == len(named)
    layers = model.size.depth + 1  # the reference's num_layers: blocks + 1
    expect = {
        "image_encoder.trunk.patch_embed.proj.weight": (lr * 0.6 * 0.9**layers, 0.1),
        "image_encoder.trunk.pos_embed": (lr * 0.6, 0.1),
        "image_encoder.trunk.blocks.0.attn.qkv.weight": (lr * 0.6 * 0.9 ** (layers - 1), 0.1),
        "image_encoder.trunk.blocks.3.norm1.weight": (lr * 0.6 * 0.9 ** (layers - 4), 0.0),
        "image_encoder.neck.convs.0.conv.weight": (lr * 0.6, 0.1),
        "memory_attention.layers.0.linear1.bias": (lr, 0.0),
        "memory_attention.norm.weight": (lr, 0.0),
        "sam_mask_decoder.output_upscaling.1.weight": (lr, 0.1),  # LayerNorm2d keeps decay
        "maskmem_tpos_enc": (lr, 0.1),
    }
    for name, (want_lr, want_decay) in expect.items():
        got_lr, got_decay = of[id(named[name])]
        assert got_lr == pytest.approx(want_lr, rel=1e-12), name
        assert got_decay == want_decay, name


def test_cosine_schedule_and_frozen_image_encoder() -> None:
    assert cosine_factor(0, 100, 0.1) == 1.0
    assert cosine_factor(50, 100, 0.1) == pytest.approx(0.55)
    assert cosine_factor(100, 100, 0.1) == pytest.approx(0.1)
    config = toy_config(**{"sam2.freeze_image_encoder": "true", "iterations": 10})
    model = Sam2(config.model)
    objective = Sam2Objective(config.main)
    objective.configure(model)
    optimizer = objective.optimizer(model, use_amp=False)
    scheduler = objective.scheduler(optimizer)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in trained) == (not name.startswith("image_encoder.")), name
    first = [g["lr"] for g in optimizer.param_groups]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * 0.55 for lr in first])


def clip(batch: int = 1, frames: int = 3) -> SimpleNamespace:
    torch.manual_seed(1)
    rgb = torch.randn(batch, frames, 3, S, S)
    cls_gt = torch.zeros(batch, frames, S, S, dtype=torch.long)
    for t in range(frames):
        cls_gt[:, t, 8 + 2 * t : 30 + 2 * t, 10:34] = 1
        cls_gt[:, t, 40:56, 36 - t : 60 - t] = 2
    first = torch.stack([(cls_gt[:, 0] == k + 1).float() for k in range(2)], 1)
    return SimpleNamespace(rgb=rgb, first_masks=first, cls_gt=cls_gt, selector=torch.ones(batch, 2))


def test_forward_outputs_and_learning_on_a_repeated_clip() -> None:
    config = toy_config(lr=1e-3, grad_clip=1.0)
    torch.manual_seed(0)
    model = Sam2(config.model).eval()
    objective = Sam2Objective(config.main)
    optimizer = objective.optimizer(model, use_amp=False)
    batch = clip()
    one_object = torch.tensor([[1.0, 0.0]])
    logits, probs, aux = model.training_forward(batch.rgb, batch.first_masks, one_object)
    assert probs.shape == logits.shape == (1, 2, 3, S, S)
    assert torch.allclose(probs.sum(2), torch.ones(1, 2, S, S), atol=1e-5)
    assert float(probs[:, :, 2].abs().max()) == 0.0
    assert float(aux["masks"][:, :, 1].detach().abs().max()) == 0.0
    assert aux["masks"].shape == (1, 3, 2, 3, S, S)
    losses = []
    for it in range(6):
        logits, probs, aux = model.training_forward(batch.rgb, batch.first_masks, batch.selector)
        loss = objective.loss(ClipOutput(logits, probs, aux), batch, it)  # type: ignore[arg-type]
        assert math.isfinite(float(loss.total.detach()))
        optimizer.zero_grad()
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.total.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < losses[-2]


def test_train_and_resume_from_the_command_line(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"bear": 5, "cat": 5}, size=(S, S), object_ids=(1, 2)).root
    out = tmp_path / "full"
    argv = ["train", "--stage", "full", "--data", str(root), "--out", str(out), "--preset", "sam2-toy"]
    keys = [f"model.sam2.image_size={S}", f"main.crop_size={S}", "main.batch_size=2", "main.save_every=2"]
    cpu = ["--device", "cpu", "--no-progress"]
    assert cli_main([*argv, *cpu, *keys, "main.iterations=2"]) == 0
    assert (out / "final.pth").is_file()
    assert cli_main([*argv, *cpu, *keys, "main.iterations=3", "--resume"]) == 0
    weights = torch.load(out / "final.pth", weights_only=True)
    assert any(name.startswith("image_encoder.trunk.") for name in weights)


def test_pipeline_trains_every_stage_with_sam2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(
        data, videos=3, frames=6, size=(64, 64), objects=(1, 2), seed=3, val_videos=1, static_images=4
    )
    config = load_config(
        "sam2-toy",
        overrides=[
            "model.sam2.image_size=64",
            "static.iterations=2",
            "static.batch_size=2",
            "static.crop_size=64",
            "main.iterations=4",
            "main.batch_size=2",
            "main.crop_size=64",
            "twoshot.end_warm=2",
            "twoshot.phase2_start_update=3",
            "inference.amp=false",
        ],
    )
    config.pipeline.data = str(data)
    config.pipeline.out = str(tmp_path / "run")
    config.pipeline.static_data = str(data / "static")
    config.pipeline.baselines = ["naive"]
    config.pipeline.device = "cpu"
    report = run_pipeline(config, log=lambda _: None, progress=False)
    assert [m.name for m in report.models] == ["static", "phase1", "phase2", "naive"]
    assert report.bank_j_and_f is not None
    for stage in ("static", "phase1", "phase2", "naive"):
        assert load_model(tmp_path / "run" / stage / "final.pth").kind == "sam2"
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "phase1" / "log.jsonl").read_text().splitlines()
    ]
    assert any("train/loss_mask" in record for record in logged)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    config = toy_config()
    torch.manual_seed(0)
    model = Sam2(config.model).eval()
    objective = Sam2Objective(config.main)
    batch = clip(batch=2)
    results = []
    for recompute in (False, True):
        model.gradient_checkpointing = recompute
        model.zero_grad()
        logits, probs, aux = model.training_forward(batch.rgb, batch.first_masks, batch.selector)
        loss = objective.loss(ClipOutput(logits, probs, aux), batch, 0)  # type: ignore[arg-type]
        loss.total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((float(loss.total.detach()), grads))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    assert recomputed == pytest.approx(plain, rel=1e-5)
    assert plain_grads.keys() == recomputed_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(recomputed_grads[name], grad, rtol=1e-3, atol=1e-6), name


def test_fine_tuning_from_a_published_file_with_the_image_encoder_frozen(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = Sam2(toy_config().model).state_dict()  # type: ignore[attr-defined]
    published = tmp_path / "sam2.1_hiera_toy.pt"
    torch.save({"model": start}, published)  # the published files' layout
    root = make_davis(tmp_path / "davis", {"bear": 5}, size=(S, S), object_ids=(1, 2)).root
    out = tmp_path / "tuned"
    argv = ["train", "--stage", "full", "--data", str(root), "--out", str(out), "--preset", "sam2-toy"]
    keys = [f"model.sam2.image_size={S}", f"main.crop_size={S}", "main.batch_size=1", "main.iterations=2"]
    frozen = ["main.sam2.freeze_image_encoder=true", "main.sam2.gradient_checkpointing=true"]
    assert (
        cli_main([*argv, "--init", str(published), "--device", "cpu", "--no-progress", *keys, *frozen]) == 0
    )
    tuned = torch.load(out / "final.pth", weights_only=True)
    assert all(torch.equal(tuned[n], v) for n, v in start.items() if n.startswith("image_encoder."))
    assert not torch.equal(tuned["memory_attention.norm.weight"], start["memory_attention.norm.weight"])
