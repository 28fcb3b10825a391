"""Training: clip forward, bootstrapped CE with ignored pixels, the loop, regimes, logs, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from helpers import ToyClips, toy_config
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.batch import ClipBatch
from twoshot.data.sampling import max_skip_at
from twoshot.errors import UserError
from twoshot.model import build_model, load_checkpoint
from twoshot.model.checkpoint import read_state_dict
from twoshot.train import objectives as objectives_module
from twoshot.train.forward import ClipOutput
from twoshot.train.loader import StreamSampler, epoch_order
from twoshot.train.loss import (
    LossResult,
    bootstrap_p,
    bootstrapped_ce,
    clip_loss,
    iou_counts,
    object_channels,
)
from twoshot.train.regimes import SupervisedRegime, TrainingRegime
from twoshot.train.trainer import Trainer, TrainingDiverged, train

# ----------------------------------------------------------------------------------------
# forward


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


def test_clip_forward_is_stcns_recurrence(tiny_model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    m = tiny_model
    rgb = torch.randn(2, 3, 3, 32, 48)
    masks = (torch.rand(2, 2, 32, 48) > 0.5).float()
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        logits, probs = m.clip_forward(rgb, masks, selector)
        assert logits.shape == probs.shape == (2, 2, 3, 32, 48)
        # By hand, one clip at a time, frame by frame (STCN's do_pass).
        for b in range(2):
            keys = [m.encode_key(rgb[b, t : t + 1]) for t in range(3)]
            sel = selector[b : b + 1]
            v0 = m.encode_value(rgb[b, :1], keys[0].f16, masks[b : b + 1])
            l1, p1 = m.segment(keys[1], keys[0].key.flatten(2), v0.flatten(3), selector=sel)
            v1 = m.encode_value(rgb[b, 1:2], keys[1].f16, p1[:, 1:])
            mk = torch.cat([keys[0].key.flatten(2), keys[1].key.flatten(2)], 2)
            mv = torch.cat([v0.flatten(3), v1.flatten(3)], 3)
            l2, _ = m.segment(keys[2], mk, mv, selector=sel)
            torch.testing.assert_close(logits[b, 0], l1[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(logits[b, 1], l2[0], atol=1e-4, rtol=1e-4)
    # An absent second object gets (almost) no probability.
    assert probs[1, :, 2].max() < 1e-3


def test_clip_forward_pads_and_other_configs() -> None:
    config = load_config("tiny", overrides=["model.key_block=bottleneck", "model.key_dim=16"]).model
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        logits, probs = model.clip_forward(
            torch.randn(1, 4, 3, 40, 36), torch.ones(1, 2, 40, 36) * 0.5, torch.ones(1, 2)
        )
    assert logits.shape == (1, 3, 3, 40, 36)
    torch.testing.assert_close(probs.sum(2), torch.ones(1, 3, 40, 36))


# ----------------------------------------------------------------------------------------
# loss


def test_bootstrap_schedule() -> None:
    assert bootstrap_p(0, 20_000, 70_000, 0.15) == 1.0
    assert bootstrap_p(19_999, 20_000, 70_000, 0.15) == 1.0
    assert bootstrap_p(20_000, 20_000, 70_000, 0.15) == pytest.approx(1.0)
    assert bootstrap_p(45_000, 20_000, 70_000, 0.15) == pytest.approx(0.575)
    assert bootstrap_p(70_000, 20_000, 70_000, 0.15) == pytest.approx(0.15)
    assert bootstrap_p(150_000, 20_000, 70_000, 0.15) == pytest.approx(0.15)


def test_bootstrapped_ce_plain_topk_and_ignore() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 8)
    target = torch.randint(0, 3, (8, 8))
    plain = bootstrapped_ce(logits, target, 1.0, plain=True)
    torch.testing.assert_close(plain, F.cross_entropy(logits[None], target[None]))
    raw = F.cross_entropy(logits[None], target[None], reduction="none").flatten()
    top = bootstrapped_ce(logits, target, 0.25)
    torch.testing.assert_close(top, raw.sort(descending=True).values[:16].mean())
    # Ignored pixels are removed before the top-p selection: p is a share of labeled pixels.
    ignored = target.clone()
    ignored[:4] = -1  # 32 of 64 pixels ignored
    raw_kept = F.cross_entropy(logits[None], target[None], reduction="none")[0, 4:].flatten()
    torch.testing.assert_close(
        bootstrapped_ce(logits, ignored, 0.25), raw_kept.sort(descending=True).values[:8].mean()
    )
    torch.testing.assert_close(bootstrapped_ce(logits, ignored, 1.0, plain=True), raw_kept.mean())


def test_all_ignored_contributes_zero_without_nan() -> None:
    logits = torch.randn(3, 8, 8, requires_grad=True)
    loss = bootstrapped_ce(logits, torch.full((8, 8), -1), 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_clip_loss_per_sample_second_object_channels() -> None:
    torch.manual_seed(0)
    cfg = load_config("tiny").main
    logits = torch.randn(2, 2, 3, 8, 8)
    cls_gt = torch.randint(0, 2, (2, 3, 8, 8))
    cls_gt[0, 1:, :2] = 2  # sample 0 has a second object
    cls_gt[1, 2] = -1  # sample 1's last frame is unlabeled
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    result = clip_loss(logits, cls_gt, selector, it=0, config=cfg)
    expected = 0.0
    for i in range(2):
        frame = (
            F.cross_entropy(logits[0, i][None], cls_gt[0, i + 1][None])
            + (F.cross_entropy(logits[1, i, :2][None], cls_gt[1, i + 1][None]) if i == 0 else 0)
        ) / 2
        expected += frame
    torch.testing.assert_close(result.total, expected)
    assert result.p == 1.0 and len(result.frames) == 2


def test_clip_loss_scores_each_sample_on_its_present_objects() -> None:
    # K = 3 slots: sample 0 has 3 objects, sample 1 two, sample 2 one (padded slots).
    torch.manual_seed(1)
    cfg = load_config("tiny").main
    logits = torch.randn(3, 2, 4, 8, 8)
    cls_gt = torch.randint(0, 4, (3, 3, 8, 8))
    cls_gt[1] = cls_gt[1].clamp(max=2)
    cls_gt[2] = cls_gt[2].clamp(max=1)
    selector = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert object_channels(selector) == [3, 2, 1]
    assert object_channels(torch.zeros(1, 2)) == [1]  # slot 1 always counts
    result = clip_loss(logits, cls_gt, selector, it=0, config=cfg)
    expected = sum(
        F.cross_entropy(logits[j, i, : c + 1][None], cls_gt[j, i + 1][None]) / 3
        for i in range(2)
        for j, c in enumerate((3, 2, 1))
    )
    torch.testing.assert_close(result.total, expected)


def test_iou_counts_skip_ignored_pixels() -> None:
    probs = torch.zeros(1, 1, 3, 2, 2)
    probs[0, 0, 1] = torch.tensor([[0.9, 0.9], [0.1, 0.1]])
    probs[0, 0, 0] = 1 - probs[0, 0, 1]
    cls_gt = torch.tensor([[[[0, 0], [0, 0]], [[1, -1], [1, 0]]]])
    counts = iou_counts(probs, cls_gt, torch.tensor([[1.0, 0.0]]))
    assert counts["i"].item() == 1 and counts["u"].item() == 2  # the -1 pixel is left out
    assert counts["sec_u"].item() == 0
    # Three slots: slots 2 and 3 pool into sec_*, an empty slot 3 counts nothing.
    probs = torch.zeros(2, 1, 4, 1, 3)
    probs[:, 0, 2] = torch.tensor([[0.9, 0.9, 0.1]])
    probs[:, 0, 3] = torch.tensor([[0.1, 0.1, 0.9]])
    cls_gt = torch.tensor([[[[0, 0, 0]], [[2, 0, 3]]]]).repeat(2, 1, 1, 1)
    counts = iou_counts(probs, cls_gt, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    assert (counts["sec_i"].item(), counts["sec_u"].item()) == (2 + 1, 3 + 2)


# ----------------------------------------------------------------------------------------
# sampler


def test_sharding_union_equals_single_process_batch() -> None:
    def batches(rank: int, world: int, batch: int) -> list[list[int]]:
        sampler = StreamSampler(
            10, batch, rank, world, seed=3, epoch=0, position=0, it=0, skip_at=lambda it: 5
        )
        stream = iter(sampler)
        return [[key[2] for key in next(stream)] for _ in range(4)]

    single = batches(0, 1, 4)
    ranks = [batches(r, 2, 2) for r in range(2)]
    for step in range(4):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(single[step])
    assert sorted(epoch_order(10, 4, 3, 0)) == sorted(single[0] + single[1])
    assert len(epoch_order(3, 4, 3, 0)) == 4  # tiny dataset fills one global batch


# ----------------------------------------------------------------------------------------
# the loop


def test_freeze_bn_false_trains_batchnorm_statistics(tmp_path: Path) -> None:
    trainer = Trainer(
        toy_config("main.freeze_bn=false", "main.iterations=2", "main.lr_steps=[]"),
        "main",
        ToyClips(),
        tmp_path / "run",
        device="cpu",
        progress=False,
    )
    bn_before = trainer.model.key_encoder.bn1.running_mean.clone()
    trainer.run()
    trainer.close()
    assert trainer.model.training
    assert not torch.equal(trainer.model.key_encoder.bn1.running_mean, bn_before)


def test_train_writes_weights_logs_and_keeps_batchnorm_frozen(tmp_path: Path) -> None:
    data = ToyClips()
    trainer = Trainer(toy_config(), "main", data, tmp_path / "run", device="cpu", progress=False)
    bn_before = trainer.model.key_encoder.bn1.running_mean.clone()
    final = trainer.run()
    trainer.close()
    assert final == tmp_path / "run" / "final.pth"
    assert not trainer.model.training
    torch.testing.assert_close(trainer.model.key_encoder.bn1.running_mean, bn_before)
    model = load_checkpoint(final, build_model(load_config("tiny").model))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["it"] == 6 and {"optimizer", "scheduler", "scaler", "rng", "stream"} <= set(ckpt)
    for name, value in read_state_dict(tmp_path / "run" / "checkpoint.pt").items():
        assert torch.equal(value, model.state_dict()[name])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["it"] for r in records] == [2, 4, 6]
    assert {"train/loss", "train/lr", "train/iou", "train/p", "perf/it_per_s"} <= set(records[0])
    assert records[-1]["train/lr"] == pytest.approx(1e-4)  # lr_steps [4], gamma 0.1
    assert records[-1]["train/p"] == pytest.approx(0.15)
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))
    # Each iteration's samples were made with the curriculum's max skip of that iteration.
    skips = [skip for _, skip, _ in data.seen][::2]
    assert skips == [max_skip_at(it, 6) for it in range(6)] == [5, 15, 25, 25, 25, 5]


class RecordingRegime(SupervisedRegime):
    """Switches dataset at it 3, ignores every target of frame 2, records the hook calls."""

    name = "recording"

    def __init__(self, first: Dataset, second: Dataset) -> None:
        self.first, self.second = first, second
        self.calls: list[tuple[str, int]] = []
        self.names: list[list[str]] = []
        self.losses: list[float] = []
        self.counter = 0

    def start(self, model: torch.nn.Module, device: torch.device) -> None:
        self.calls.append(("start", -1))

    def dataset(self, it: int) -> Dataset:
        return self.first if it < 3 else self.second

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        assert not torch.is_grad_enabled()
        assert outputs.probs.shape[1] == 2
        self.calls.append(("prepare", it))
        self.names.append(list(batch.names))
        targets = batch.cls_gt.clone()
        targets[:, 2] = -1
        return batch.replace(cls_gt=targets)

    def after_step(self, model: torch.nn.Module, it: int) -> None:
        assert isinstance(model, torch.nn.Module) and not hasattr(model, "module")
        self.calls.append(("after", it))
        self.counter += 1

    def extra_state(self) -> dict[str, Any]:
        return {"counter": self.counter}

    def log_scalars(self) -> dict[str, float]:
        return {"counter": float(self.counter)}


def test_mode_hooks_dataset_switch_and_ignored_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[LossResult] = []
    real = objectives_module.clip_loss

    def spy(*args: Any, **kwargs: Any) -> LossResult:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(objectives_module, "clip_loss", spy)
    regime = RecordingRegime(ToyClips(prefix="a"), ToyClips(prefix="b"))
    assert isinstance(regime, TrainingRegime)
    train(toy_config(), "main", None, tmp_path / "run", regime=regime, device="cpu", progress=False)
    assert regime.calls[0] == ("start", -1)
    assert regime.calls[1:] == [(hook, it) for it in range(6) for hook in ("prepare", "after")]
    assert all(n.startswith("a") for names in regime.names[:3] for n in names)
    assert all(n.startswith("b") for names in regime.names[3:] for n in names)
    assert all(result.frames[1].item() == 0.0 for result in seen)  # frame 2 fully ignored
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["mode/counter"] == 6.0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["mode"] == {"counter": 6}


def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = objectives_module.clip_loss

    def poisoned(
        logits: torch.Tensor, cls_gt: torch.Tensor, selector: torch.Tensor, it: int, config: Any
    ) -> LossResult:
        result = real(logits, cls_gt, selector, it, config)
        if it == 4:  # the 5th iteration
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(objectives_module, "clip_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="iteration 5 of 6") as info:
        train(toy_config(), "main", ToyClips(), out, device="cpu", progress=False)
    assert "checkpoint.pt (iteration 3)" in str(info.value)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["it"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["network"].values())
    assert not (out / "final.pth").exists()


def test_existing_checkpoint_needs_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        toy_config("main.iterations=1", "main.lr_steps=[]"),
        "main",
        ToyClips(),
        out,
        device="cpu",
        progress=False,
    )
    with pytest.raises(UserError, match="--resume"):
        Trainer(toy_config(), "main", ToyClips(), out, device="cpu")
    with pytest.raises(UserError, match="no checkpoint.pt"):
        Trainer(toy_config(), "main", ToyClips(), tmp_path / "other", resume=True, device="cpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_sample_reaches_caller_as_clean_user_error(tmp_path: Path, workers: int) -> None:
    config = toy_config(f"main.num_workers={workers}")
    with pytest.raises(UserError) as info:
        train(config, "main", ToyClips(n=2, fail_on=1), tmp_path / "run", device="cpu", progress=False)
    assert str(info.value) == "video v1: no object in any annotation mask"


def test_empty_dataset_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty"):
        train(toy_config(), "main", ToyClips(n=0), tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(UserError, match="main.batch_size"):
        train(toy_config("main.batch_size=0"), "main", ToyClips(), tmp_path / "b", device="cpu")
    with pytest.raises(UserError, match="max_skip_values"):
        train(toy_config("main.max_skip_values=[5]"), "main", ToyClips(), tmp_path / "c", device="cpu")
    with pytest.raises(UserError, match="stage"):
        train(toy_config(), "phase3", ToyClips(), tmp_path / "d", device="cpu")


# ----------------------------------------------------------------------------------------
# command line


def test_cli_bad_input_is_a_clean_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        [
            "train",
            "--stage",
            "main",
            "--data",
            str(tmp_path / "missing"),
            "--dataset",
            "davis",
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "tiny",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err
    code = cli_main(
        [
            "train",
            "--stage",
            "main",
            "--data",
            str(tmp_path),
            "--dataset",
            "static",
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "tiny",
        ]
    )
    assert code == 2 and "does not fit --stage main" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:skipping 1 of 3 training videos")
def test_cli_trains_on_a_davis_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixtures = pytest.importorskip("twoshot.data.fixtures")
    pytest.importorskip("twoshot.data.vos_clips")
    data = fixtures.make_davis(tmp_path / "davis", {"bear": 6, "cat": 5, "dog": 2}, size=(32, 40))
    out = tmp_path / "out"
    args = [
        "train",
        "--stage",
        "main",
        "--data",
        str(data.root),
        "--split",
        "train",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--no-progress",
        "main.iterations=2",
        "main.lr_steps=[]",
        "main.batch_size=2",
        "main.crop_size=32",
        "main.num_workers=0",
        "main.log_every=1",
    ]
    assert cli_main(args) == 0  # "dog" (2 frames) is skipped
    assert "final weights" in capsys.readouterr().out
    assert (out / "final.pth").is_file() and len((out / "log.jsonl").read_text().splitlines()) == 2
    assert cli_main(args + ["--resume"]) == 0  # already complete: nothing to do
    assert cli_main(args) == 2  # would overwrite the checkpoint
    assert "--resume" in capsys.readouterr().err
    short = fixtures.make_davis(tmp_path / "short", {"x": 2, "y": 1}, size=(32, 40))
    assert (
        cli_main(
            [
                "train",
                "--stage",
                "main",
                "--data",
                str(short.root),
                "--out",
                str(tmp_path / "out2"),
                "--preset",
                "tiny",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no usable training videos" in err and "Traceback" not in err


_FORK_SCRIPT = """
import cv2, numpy as np, torch
from helpers import ToyClips, toy_config
from twoshot.train.trainer import train

class CvClips(ToyClips):
    def __getitem__(self, index):
        cv2.setNumThreads(1)          # what the clip datasets do in a worker
        return super().__getitem__(index)

image = np.random.rand(800, 800, 3).astype(np.float32)
for _ in range(3):                    # the parent's OpenCV pool now has threads
    cv2.warpAffine(image, np.eye(2, 3), (800, 800))
train(toy_config("main.iterations=2", "main.lr_steps=[]", "main.num_workers=2"), "main", CvClips(), {out!r},
      device="cpu", progress=False)
print("done")
"""


def test_workers_fork_safely_after_opencv_ran_in_the_parent(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = _FORK_SCRIPT.format(out=str(tmp_path / "run"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]


def test_init_weights_and_bad_init(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = build_model(load_config("tiny").model)
    torch.save(source.state_dict(), tmp_path / "init.pth")
    trainer = Trainer(
        toy_config(), "main", ToyClips(), tmp_path / "run", init=tmp_path / "init.pth", device="cpu"
    )
    for name, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(UserError, match="junk.pth"):
        Trainer(toy_config(), "main", ToyClips(), tmp_path / "run2", init=tmp_path / "junk.pth", device="cpu")


def test_cli_static_stage_and_empty_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twoshot.data.masks import write_frame, write_mask

    rng = np.random.default_rng(0)
    for i in range(3):
        write_frame(tmp_path / "pairs" / f"im{i}.jpg", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[10:30, 12:36] = 1
        write_mask(tmp_path / "pairs" / f"im{i}.png", mask)
    common = [
        "--stage",
        "static",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--no-progress",
        "static.iterations=2",
        "static.lr_steps=[]",
        "static.batch_size=3",
        "static.crop_size=32",
        "static.num_workers=0",
    ]
    assert cli_main(["train", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "a"), *common]) == 0
    assert (tmp_path / "a" / "final.pth").is_file()
    write_mask(tmp_path / "pairs" / "im1.png", np.zeros((40, 48), dtype=np.uint8))
    capsys.readouterr()
    assert cli_main(["train", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "b"), *common]) == 2
    err = capsys.readouterr().err
    assert "im1.png: mask has no object" in err and "Traceback" not in err
