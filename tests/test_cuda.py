"""The CUDA paths: AMP training with the grad scaler, half-precision and compiled inference,
training through NCCL, and the pseudo-label bank sharded over processes that share a GPU.

Every test here is marked ``cuda`` and skipped on a machine without CUDA, so CI (CPU only)
reports them as skipped; ``pytest -m cuda`` runs only these, and
``benchmarks/gpu_check.py`` runs them on a GPU machine and puts their outcome in its table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from helpers import ToyClips, toy_config
from twoshot.config import InferenceConfig, load_config
from twoshot.data.budget import save_budget
from twoshot.data.fixtures import GeneratedDataset, make_davis, random_video
from twoshot.data.masks import read_mask
from twoshot.data.readers import open_dataset
from twoshot.inference import PropagationEngine
from twoshot.inference.pseudo_label import build_bank
from twoshot.model import STCN, build_model, load_model, save_weights
from twoshot.train.recipes import build_stage_dataset
from twoshot.train.regimes import SupervisedRegime
from twoshot.train.trainer import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Half-precision masks must agree with fp32 on this share of pixels (the bar), the
# compiled network's with the eager one's on the engine's equality bar.
HALF_AGREEMENT = 0.995
COMPILED_AGREEMENT = 0.999


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def _mean_iou(masks: np.ndarray, labels: np.ndarray) -> float:
    """Mean over objects of the IoU on every frame but the given first one."""
    ious = []
    for obj in (int(o) for o in np.unique(labels) if o):
        pred, true = masks[1:] == obj, labels[1:] == obj
        ious.append((pred & true).sum() / max((pred | true).sum(), 1))
    return float(np.mean(ious))


# ---------------------------------------------------------------------------------------------
# A tiny model trained on the GPU (with AMP): random weights give near-even probabilities,
# whose argmax rounding flips, so precision comparisons need a model that segments.


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    root = tmp_path_factory.mktemp("cuda-davis")
    return make_davis(root, {f"v{i}": 12 for i in range(6)}, size=(96, 128))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, davis: GeneratedDataset) -> Path:
    """final.pth of the tiny preset trained 400 iterations (batch 8, 64 px, AMP) on cuda."""
    config = load_config(
        "tiny",
        overrides=[
            "main.iterations=400",
            "main.batch_size=8",
            "main.crop_size=64",
            "main.num_workers=2",
            "main.lr=1e-3",
            "main.lr_steps=[320]",
            "main.amp=true",
            "main.log_every=50",
            "main.save_every=100000",
            "main.image_every=100000",
        ],
    )
    dataset = build_stage_dataset("main", config, davis.root, "davis", "train")
    trainer = Trainer(
        config, "main", dataset, tmp_path_factory.mktemp("cuda-trained"), device="cuda", progress=False
    )
    try:
        assert trainer.use_amp
        return trainer.run()
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    """24 frames at 240x320 with two objects, and their ground truth."""
    return random_video(24, (240, 320), object_ids=(1, 2), seed=7)


def _segment(model: STCN, clip: tuple[np.ndarray, np.ndarray], **settings: Any) -> np.ndarray:
    frames, labels = clip
    engine = PropagationEngine(model, InferenceConfig(size=-1, device="cuda", **settings))
    return engine.propagate(frames, {0: labels[0]}).masks


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inference_agrees_with_fp32(
    trained: Path, clip: tuple[np.ndarray, np.ndarray], dtype: str
) -> None:
    model = load_model(trained)
    fp32 = _segment(model, clip)
    # The model segments (random weights score about 0.04), so agreement means something.
    assert _mean_iou(fp32, clip[1]) > 0.4, _mean_iou(fp32, clip[1])
    half = _segment(model, clip, amp=True, amp_dtype=dtype)
    assert _agreement(half, fp32) >= HALF_AGREEMENT, f"{dtype}: {_agreement(half, fp32):.5f}"


def test_compiled_inference_equals_eager(trained: Path, clip: tuple[np.ndarray, np.ndarray]) -> None:
    model = load_model(trained)
    eager = _segment(model, clip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _segment(model, clip, compile=True)
    fell_back = [str(w.message) for w in caught if "without torch.compile" in str(w.message)]
    assert not fell_back, fell_back  # it really ran compiled
    assert _agreement(compiled, eager) >= COMPILED_AGREEMENT, _agreement(compiled, eager)


# ---------------------------------------------------------------------------------------------
# AMP training: the grad scaler trains, is saved, and comes back on --resume


class Crash(Exception):
    """Stands in for a killed job."""


class CrashAfter(SupervisedRegime):
    """Supervised training that raises after 0-based iteration ``at``."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def after_step(self, model: torch.nn.Module, it: int) -> None:
        if it == self.at:
            raise Crash(it)


def _amp_trainer(
    preset: str, out: Path, regime: SupervisedRegime | None = None, resume: bool = False
) -> Trainer:
    config = toy_config("main.iterations=8", "main.save_every=4", "main.amp=true")
    if preset == "stcn":
        # STCN's own learning rate: at the toy 1e-3, four Adam steps grow the activations of
        # a randomly initialised ResNet-50 with frozen BatchNorm past float16's range, and
        # the loss turns NaN (seen on an H200; the trainer then stops, keeping its checkpoint).
        stcn = load_config("stcn")
        config.model, config.main.lr = stcn.model, stcn.main.lr
    return Trainer(
        config,
        "main",
        ToyClips(n=8, size=64),
        out,
        regime=regime,
        resume=resume,
        device="cuda",
        progress=False,
    )


@pytest.mark.parametrize("preset", ["tiny", "stcn"])
def test_amp_training_step_scales_and_resumes(tmp_path: Path, preset: str) -> None:
    straight = _amp_trainer(preset, tmp_path / "straight")
    start = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.run()
    straight.close()
    assert straight.use_amp and straight.scaler.is_enabled()
    losses = [
        json.loads(line)["train/loss"]
        for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    ]
    assert losses and all(np.isfinite(losses))
    changed = [
        k
        for k, v in straight.model.state_dict().items()
        if v.dtype.is_floating_point and not torch.equal(v, start[k])
    ]
    assert len(changed) > len(start) // 2  # the scaler let optimiser steps through

    crashed = _amp_trainer(preset, tmp_path / "resumed", regime=CrashAfter(5))
    with pytest.raises(Crash):
        crashed.run()
    crashed.close()
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert saved["it"] == 4 and saved["scaler"]["scale"] > 0
    resumed = _amp_trainer(preset, tmp_path / "resumed", regime=CrashAfter(None), resume=True)
    assert resumed.it == 4
    assert resumed.scaler.state_dict() == saved["scaler"]
    resumed.run()
    resumed.close()
    # The scale moves only on overflowing steps: the resumed run saw the same ones.
    assert resumed.scaler.get_scale() == straight.scaler.get_scale()


# ---------------------------------------------------------------------------------------------
# NCCL: with one GPU a process group of one (NCCL refuses two ranks on one device), with two
# or more GPUs two processes; either way training goes through DDP and NCCL collectives. The
# reference run without a group is made in a fresh process too, and every run computes in
# full fp32 (no TF32, deterministic cuDNN) with plain cross-entropy, so that the two differ
# only by the process group and by the order of CUDA's atomic additions.

NCCL_OVERRIDES = (
    "main.iterations=4",
    "main.save_every=2",
    "main.log_every=2",
    "main.amp=false",
    "main.loss_top_p=1.0",
)
# Elements of each weight tensor that must agree within atol 2e-5 + rtol 1e-4 (the CPU test's
# tolerance, test_distributed.py): all but the odd element an atomic addition's order flips.
NCCL_AGREEMENT = 0.99
NCCL_LARGEST = 5e-4  # a quarter of the four steps' mean update (lr 1e-3)


def _exact_cuda() -> None:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _nccl_worker(rank: int, world: int, port: int, batch: int, out: str) -> None:
    """Train on cuda:rank in a group of ``world`` NCCL processes (``world`` 0: no group)."""
    import torch.distributed as dist

    _exact_cuda()
    if world > 0:
        os.environ.update(
            {
                "RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        )
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one machine: no network needed
    if world == 1:  # a group the caller made: the trainer must join it
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1)
    name = "single" if world == 0 else "ddp"
    trainer = Trainer(
        toy_config(*NCCL_OVERRIDES, f"main.batch_size={batch}"),
        "main",
        ToyClips(n=8),
        Path(out) / name,
        device="cuda",
        progress=False,
    )
    try:
        facts = {
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "ddp": isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel),
        }
        start = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        trainer.run()
        torch.save(
            {"start": start, "end": {k: v.cpu() for k, v in trainer.model.state_dict().items()}},
            Path(out) / f"{name}{rank}.pt",
        )
        (Path(out) / f"{name}{rank}.json").write_text(json.dumps(facts))
    finally:
        trainer.close()
        if world == 1:
            dist.destroy_process_group()


def test_nccl_training_matches_one_process(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())
    mp.spawn(_nccl_worker, args=(world, _free_port(), 2, str(tmp_path)), nprocs=world, join=True)
    mp.spawn(_nccl_worker, args=(0, 0, 2 * world, str(tmp_path)), nprocs=1, join=True)
    assert json.loads((tmp_path / "ddp0.json").read_text()) == {"backend": "nccl", "ddp": True}
    assert json.loads((tmp_path / "single0.json").read_text()) == {"backend": None, "ddp": False}
    ddp = torch.load(tmp_path / "ddp0.pt", weights_only=True)
    single = torch.load(tmp_path / "single0.pt", weights_only=True)
    if world == 2:  # replicas stay identical
        other = torch.load(tmp_path / "ddp1.pt", weights_only=True)["end"]
        assert all(torch.equal(ddp["end"][k], other[k]) for k in other)
    for name, value in single["end"].items():
        # key_proj's bias has an exactly zero gradient (see test_distributed.py).
        if not value.dtype.is_floating_point or name == "key_proj.key_proj.bias":
            continue
        difference = (ddp["end"][name] - value).abs()
        close = difference <= 2e-5 + 1e-4 * value.abs()
        assert close.float().mean() >= NCCL_AGREEMENT and difference.max() <= NCCL_LARGEST, (
            f"{name}: {close.float().mean():.4%} of elements agree, largest difference "
            f"{(ddp['end'][name] - value).abs().max():.2e}, mean update "
            f"{(value - single['start'][name]).abs().mean():.2e}"
        )
        if name.endswith("weight") and "bn" not in name:
            assert not torch.equal(value, single["start"][name]), f"{name} did not train"


# ---------------------------------------------------------------------------------------------
# The pseudo-label bank over two processes sharing one GPU equals one process


def test_bank_sharded_over_two_processes_equals_one(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "data", {"bear": 6, "cat": 5, "dog": 7}, size=(48, 64))
    torch.manual_seed(0)
    model = build_model(load_config("tiny").model).eval()
    ckpt = tmp_path / "tiny.pth"
    save_weights(model, ckpt)
    budget = tmp_path / "budget.json"
    save_budget(
        budget, {"bear": ["00000.jpg", "00004.jpg"], "cat": ["00002.jpg"], "dog": ["00001.jpg", "00006.jpg"]}
    )
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [
            sys.executable,
            "-m",
            "twoshot.cli",
            "pseudo-label",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data.root),
            "--budget",
            str(budget),
            "--out",
            str(tmp_path / "bank"),
            "--size",
            "-1",
            "--device",
            "cuda",
            "--no-progress",
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    single = build_bank(
        model,
        open_dataset("davis", data.root, "train"),
        budget,
        tmp_path / "single",
        # What the command line runs: the tiny preset's settings (its exact path included).
        dataclasses.replace(load_config("tiny").inference, device="cuda"),
        checkpoint=ckpt,
        progress=False,
    )
    assert single.written == 3
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and sorted(manifest["videos"]) == ["bear", "cat", "dog"]
    for video, names in data.frame_names.items():
        for name in names:
            sharded = read_mask(tmp_path / "bank" / video / f"{name}.png")[0]
            alone = read_mask(tmp_path / "single" / video / f"{name}.png")[0]
            np.testing.assert_array_equal(sharded, alone, err_msg=f"{video}/{name}")
