"""The fast inference copy: folded BatchNorm, shared decoder input, the exact switch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BENCHMARKS, load_benchmark
from twoshot.config import InferenceConfig, load_config, preset_names
from twoshot.config_checks import check_inference_settings
from twoshot.data.fixtures import make_davis, make_generic
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine
from twoshot.model import STCN, build_model, save_weights
from twoshot.model.fast_inference import SharedInputResBlock, fold_batch_norms
from twoshot.model.resnet import ResNetTrunk
from twoshot.model.stcn.modules import ResBlock


def _with_running_stats(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (fresh ones are identities)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return module.eval()


@pytest.mark.parametrize("block,layers,bias", [("bottleneck", [1, 2, 1], False), ("basic", [2, 1, 1], True)])
def test_folded_trunk_computes_the_same_function(block: str, layers: list[int], bias: bool) -> None:
    torch.manual_seed(0)
    trunk = _with_running_stats(ResNetTrunk(block, layers, width=8, conv_bias=bias))
    folded = fold_batch_norms(trunk)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules()) > 0  # original kept
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = trunk.layer3(trunk.layer2(trunk.layer1(trunk.stem(x))))
        got = folded.layer3(folded.layer2(folded.layer1(folded.stem(x))))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_shared_input_resblock_equals_the_block_on_the_concatenation() -> None:
    torch.manual_seed(1)
    block = ResBlock(12, 8).eval()
    shared = SharedInputResBlock(block, per_object_channels=5)
    per_object, frame = torch.randn(2 * 3, 5, 7, 9), torch.randn(2, 7, 7, 9)
    # Objects of a frame are consecutive (batch-major), so frame b serves rows 3b .. 3b+2.
    concat = torch.cat([per_object, frame.repeat_interleave(3, dim=0)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(shared(per_object, frame), block(concat), rtol=1e-5, atol=1e-6)
        one = shared(per_object[:2], frame[:2])  # one object per frame
        torch.testing.assert_close(
            one, block(torch.cat([per_object[:2], frame[:2]], 1)), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="downsample"):
        SharedInputResBlock(ResBlock(8, 8), 4)


def test_fast_copy_matches_the_network_and_leaves_it_alone() -> None:
    torch.manual_seed(2)
    model = _with_running_stats(build_model(load_config(preset="tiny").model))
    assert isinstance(model, STCN)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.fast_copy()
    images, masks = torch.randn(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        q, qf = model.encode_key(images), fast.encode_key(images)
        torch.testing.assert_close(qf.f16, q.f16, rtol=1e-4, atol=1e-5)
        v, vf = model.encode_value(images, q.f16, masks), fast.encode_value(images, qf.f16, masks)
        torch.testing.assert_close(vf, v, rtol=1e-4, atol=1e-5)
        readout = torch.randn(1, 3, model.config.value_dim, *q.key.shape[-2:])
        torch.testing.assert_close(fast.decode(readout, qf), model.decode(readout, q), rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(model.decoder.compress, ResBlock)


def test_decoder_skip_convolution_runs_once_per_frame() -> None:
    """The skip features are per frame; objects share them, with the same values as
    computing them for every object (the reference's per-object calls)."""
    torch.manual_seed(3)
    model = build_model(load_config(preset="tiny").model).eval()
    assert isinstance(model, STCN)
    images = torch.randn(2, 3, 64, 96)
    readout = torch.randn(2, 3, model.config.value_dim, 4, 6)
    calls: list[int] = []
    hook = model.decoder.up_8_4.skip_conv.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    with torch.no_grad():
        q = model.encode_key(images)
        logits = model.decode(readout, q)
        per_object = [model.decode(readout[:, k : k + 1], q) for k in range(3)]
    hook.remove()
    assert calls[0] == 2  # one per frame, not 2 x 3
    torch.testing.assert_close(logits, torch.cat(per_object, dim=1), rtol=0, atol=0)


def test_exact_refuses_options_that_are_not_bit_identical() -> None:
    for option in ("channels_last", "compile"):
        with pytest.raises(UserError, match=f"inference.exact with inference.{option}"):
            check_inference_settings(InferenceConfig(exact=True, **{option: True}))  # type: ignore[arg-type]
    assert InferenceConfig().uses_channels_last() and not InferenceConfig(exact=True).uses_channels_last()
    assert not InferenceConfig(channels_last=False).uses_channels_last()


def test_infer_exact_flag_gives_the_exact_masks(tmp_path) -> None:  # noqa: ANN001
    """``twoshot infer --exact`` writes the exact path's masks; the default agrees on >= 99.9%."""
    data = make_generic(tmp_path / "data", {"clip": 6}, size=(48, 64), object_ids=(1, 2), image_ext=".png")
    torch.manual_seed(4)
    model = _with_running_stats(build_model(load_config(preset="tiny").model))
    save_weights(model, tmp_path / "w.pth")
    outs = {}
    for name, extra in (("exact", ["--exact"]), ("fast", [])):
        out = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "twoshot",
            "infer",
            "--data",
            str(data.root),
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / "w.pth"),
            "--preset",
            "tiny",
            "--no-progress",
            *extra,
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        outs[name] = out
    from PIL import Image

    from twoshot.config import InferenceConfig as Config
    from twoshot.inference import PropagationEngine

    engine = PropagationEngine(
        model, Config(size=load_config(preset="tiny").inference.size, exact=True, device="cpu")
    )
    expected = engine.propagate(data.frames["clip"], {0: data.labels["clip"][0]}).masks
    exact = np.stack([np.array(Image.open(outs["exact"] / "clip" / f"{i:05d}.png")) for i in range(6)])
    fast = np.stack([np.array(Image.open(outs["fast"] / "clip" / f"{i:05d}.png")) for i in range(6)])
    np.testing.assert_array_equal(exact, expected)
    assert (fast == expected).mean() >= 0.999


# --- No drift: the fast path against the exact path, frame by frame, through the memory ---

fast_agreement = load_benchmark("fast_agreement")
DRIFT_SIZE = (48, 64)
DRIFT_FRAMES = 10
ENTERS_AT = 3
LOGIT_STD = 1.0  # of the final convolution's logits on the first segmented frame
# The kinds whose logit convolution fast_agreement.final_conv knows; a new model adds its own there.
CALIBRATED_KINDS = ("stcn", "cutie")
DRIFT_PRESETS = [p for p in preset_names() if load_config(p).model.kind in CALIBRATED_KINDS]


def test_agreement_benchmark_measures_given_weights_on_a_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--checkpoint --data``: the given weights on the dataset's videos, frames of every
    video in order; the figures equal an engine run here on the same videos."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its `from common import ...`, as a script
    make_davis(tmp_path / "d", {"a": 5, "b": 4}, size=(32, 48), splits={"val": ["a", "b"]}, seed=2)
    model = fast_agreement.seeded_weights(build_model(load_config("tiny").model), 4)
    save_weights(model, tmp_path / "w.pth")
    report = fast_agreement.run(
        ["tiny"], variants=("bf16",), checkpoint=tmp_path / "w.pth", data=tmp_path / "d", videos=2
    )
    config = dataclasses.replace(load_config("tiny").inference, size=-1, device="cpu")
    bf16 = dataclasses.replace(config, amp=True, amp_dtype="bfloat16", exact=False)
    expected = []
    for video, given in fast_agreement.dataset_clips(tmp_path / "d", "val", 2):
        exact = PropagationEngine(model, config).propagate(video, given)
        other = PropagationEngine(model, bf16).propagate(video, given)
        expected += [round(float((o == e).mean()), 5) for o, e in zip(other.masks, exact.masks, strict=True)]
    assert len(expected) == 9 and min(expected) < 1  # bfloat16 moves some pixels: a real comparison
    assert report["results"]["tiny"]["bf16"]["per_frame"] == expected
    assert report["settings"]["data"] == f"{tmp_path / 'd'} (val, 2 videos)"


@pytest.mark.parametrize("preset", DRIFT_PRESETS)
def test_fast_path_agrees_with_the_exact_path_on_every_frame(preset: str) -> None:
    """Every preset's default (fast) path against its exact path over 10 frames of memory,
    with an object entering on frame 3 and calibrated weights (mixed probabilities): >= 99.9%
    equal pixels on each frame, not only on average. Cutie's fast path is its exact one."""
    torch.manual_seed(0)
    video, masks = fast_agreement.entering_video(DRIFT_SIZE, DRIFT_FRAMES, ENTERS_AT)
    config = dataclasses.replace(load_config(preset).inference, size=-1, device="cpu")
    model = fast_agreement.calibrated_model(preset, config, video, masks[0], LOGIT_STD, seed=5)
    exact = PropagationEngine(model, dataclasses.replace(config, exact=True)).propagate(
        video, masks, probabilities=True
    )
    fast = PropagationEngine(model, config).propagate(video, masks, probabilities=True)
    assert exact.probabilities is not None and fast.probabilities is not None
    segmented = [t for t in range(DRIFT_FRAMES) if t not in masks]
    # Mixed probabilities on every segmented frame: the comparison is not decided by margins.
    uncertain = (exact.probabilities.max(axis=1) < 0.9).mean(axis=(1, 2))
    assert all(uncertain[t] >= 0.05 for t in segmented), uncertain.round(3).tolist()
    agreement = (fast.masks == exact.masks).mean(axis=(1, 2))
    assert all(agreement[t] >= 0.999 for t in range(DRIFT_FRAMES)), agreement.round(5).tolist()
    if model.kind == "cutie":
        # With near-tie weights at 240x320, channels-last rounding flipped Cutie's attention
        # masks and 3% / 17% of frames 8 / 9 (docs/performance.md): its default is exact.
        assert not model.channels_last_when_fast
        np.testing.assert_array_equal(fast.probabilities, exact.probabilities)
