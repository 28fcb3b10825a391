"""A run stopped after k iterations and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import ToyClips, toy_config
from twoshot.data.batch import ClipBatch
from twoshot.train.forward import ClipOutput
from twoshot.train.regimes import SupervisedRegime
from twoshot.train.trainer import train


class Crash(Exception):
    """Stands in for a killed job."""


class CountingRegime(SupervisedRegime):
    """Has state that must survive the resume; crashes after iteration ``crash_at`` if set.

    Its targets depend on the global torch generator, so a resume that lost the RNG state
    would train differently.
    """

    name = "counting"

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.steps = 0
        self.loaded: dict[str, Any] | None = None

    def prepare_targets(self, batch: ClipBatch, outputs: ClipOutput, it: int) -> ClipBatch:
        drop = torch.rand(batch.cls_gt.shape) < 0.2  # ignore a random 20 % of pixels
        return batch.replace(cls_gt=batch.cls_gt.masked_fill(drop, -1))

    def after_step(self, model: torch.nn.Module, it: int) -> None:
        self.steps += 1
        if it == self.crash_at:
            raise Crash(it)

    def extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.loaded = state
        self.steps = state["steps"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical(tmp_path: Path, workers: int) -> None:
    # 8 iterations over 5 samples in batches of 2 (2 steps per epoch): the checkpoint at 5 is
    # mid-epoch, after a learning-rate step, during the bootstrap ramp and the curriculum.
    config = toy_config(
        "main.iterations=8",
        "main.save_every=5",
        "main.lr_steps=[3]",
        "main.loss_start_warm=2",
        "main.loss_end_warm=7",
        f"main.num_workers={workers}",
    )
    whole = train(
        config,
        "main",
        ToyClips(n=5),
        tmp_path / "whole",
        regime=CountingRegime(),
        device="cpu",
        progress=False,
    )

    out = tmp_path / "parts"
    with pytest.raises(Crash):
        train(
            config,
            "main",
            ToyClips(n=5),
            out,
            regime=CountingRegime(crash_at=6),
            device="cpu",
            progress=False,
        )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["it"] == 5
    regime = CountingRegime()
    resumed = train(
        config, "main", ToyClips(n=5), out, resume=True, regime=regime, device="cpu", progress=False
    )
    assert regime.loaded == {"steps": 5} and regime.steps == 8

    expected, actual = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # The log holds each logging step once, as an uninterrupted run's does.
    its = [json.loads(line)["it"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert its == [2, 4, 6, 8]
