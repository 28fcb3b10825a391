"""Two gloo processes on CPU train like one process with the doubled batch.

The processes are spawned with torch.multiprocessing and joined through the same environment
variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
trainer's torchrun path is what runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import ToyClips, cutie_toy_config, toy_config
from twoshot.config import Config
from twoshot.train.trainer import Trainer

ITERATIONS = 4
OVERRIDES = (f"main.iterations={ITERATIONS}", "main.save_every=2", "main.log_every=2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIGS = {"stcn": toy_config, "cutie": cutie_toy_config}
# Parameters whose gradient is exactly zero in theory, so that Adam turns rounding noise into
# full-size steps there: STCN's key_proj bias (its L2 affinity ignores a shift shared by
# memory and query keys).
NOISE_ONLY = {"key_proj.key_proj.bias"}


def _signal(name: str, value: torch.Tensor) -> torch.Tensor:
    """The part of a parameter with a real gradient. Attention's key bias (the middle third of
    in_proj_bias) adds the same amount to every logit of a query, which softmax ignores: its
    gradient is zero up to rounding, which Adam scales to full steps (Cutie's transformer)."""
    if name.endswith("in_proj_bias"):
        third = value.shape[0] // 3
        return torch.cat([value[:third], value[2 * third :]])
    return value


def _config(kind: str, *overrides: str) -> Config:
    return CONFIGS[kind](*OVERRIDES, *overrides)


def _worker(rank: int, world: int, port: int, out: str, kind: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)  # 2 processes on 2 cores
    trainer = Trainer(
        _config(kind, "main.batch_size=2"),
        "main",
        ToyClips(n=8),
        Path(out) / "ddp",
        device="cpu",
        progress=False,
    )
    try:
        trainer.run()
        torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        trainer.close()


@pytest.mark.parametrize("kind", ["stcn", "cutie"])
def test_two_gloo_processes_match_one_process_with_double_batch(tmp_path: Path, kind: str) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), kind), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # replicas stay identical
    # Rank 0 alone wrote the checkpoint, weights and logs.
    ddp = tmp_path / "ddp"
    assert (ddp / "final.pth").is_file() and (ddp / "checkpoint.pt").is_file()
    assert len((ddp / "log.jsonl").read_text().splitlines()) == 2
    saved = torch.load(ddp / "final.pth", weights_only=True)
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)

    single = Trainer(
        _config(kind, "main.batch_size=4"),
        "main",
        ToyClips(n=8),
        tmp_path / "single",
        device="cpu",
        progress=False,
    )
    single.run()
    single.close()
    reference = single.model.state_dict()
    start = Trainer(_config(kind), "main", ToyClips(n=8), tmp_path / "init", device="cpu").model.state_dict()
    for name, value in reference.items():
        if not value.dtype.is_floating_point or name in NOISE_ONLY:
            continue
        torch.testing.assert_close(
            _signal(name, rank0[name]), _signal(name, value), atol=2e-5, rtol=1e-4, msg=name
        )
        if name.endswith("weight") and "bn" not in name:
            assert not torch.equal(value, start[name]), f"{name} did not train"
