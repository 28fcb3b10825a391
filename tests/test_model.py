"""STCN model: reference parameter names, shapes, memory read, aggregation, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from twoshot.config import load_config
from twoshot.errors import UserError
from twoshot.model import STCN, build_model, load_checkpoint, load_model, save_weights
from twoshot.model.aggregate import aggregate
from twoshot.model.checkpoint import read_state_dict
from twoshot.model.preprocess import pad_divide_by, unpad
from twoshot.model.registry import build_skeleton
from twoshot.model.resnet import ResNetTrunk
from twoshot.model.stcn.memory import memory_affinity, readout
from twoshot.model.stcn.weights import expand_value_conv1

REFERENCE_KEYS = Path(__file__).parent / "data" / "stcn_state_dict_keys.tsv"


@pytest.fixture(scope="module")
def tiny() -> STCN:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


def test_stcn_preset_has_the_reference_405_names_and_shapes() -> None:
    expected = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        name, shape = line.split("\t")
        expected[name] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    with torch.device("meta"):
        model = STCN(load_config("stcn").model)
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 405
    assert actual == expected


@pytest.mark.parametrize("preset,stride", [("tiny", 16), ("tiny", 8), ("stcn", 16)])
def test_shapes(preset: str, stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(preset, overrides=[f"model.output_stride={stride}"]).model).eval()
    cfg = model.config
    frames = torch.randn(2, 3, 64, 96)
    h, w = 64 // stride, 96 // stride
    with torch.no_grad():
        feats = model.encode_key(frames)
        assert feats.key.shape == (2, cfg.key_dim, h, w)
        assert feats.thin.shape == (2, cfg.value_dim, h, w)
        assert feats.f8.shape[-2:] == (8, 12) and feats.f4.shape[-2:] == (16, 24)
        masks = torch.rand(1, 3, 64, 96)
        values = model.encode_value(frames[:1], feats.f16[:1], masks)
        assert values.shape == (1, 3, cfg.value_dim, h, w)
        logits, prob = model.segment(feats.index(1), feats.key[:1].flatten(2), values.flatten(3), top_k=20)
    assert logits.shape == prob.shape == (1, 4, 64, 96)
    torch.testing.assert_close(prob.sum(1), torch.ones(1, 64, 96))


def test_encode_value_batches_objects_like_one_call_per_object(tiny: STCN) -> None:
    frames = torch.randn(1, 3, 32, 32)
    masks = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        f16 = tiny.encode_key(frames).f16
        batched = tiny.encode_value(frames, f16, masks)
        for i in range(3):
            others = sum(masks[:, j : j + 1] for j in range(3) if j != i)
            single = tiny.value_encoder(frames, f16, masks[:, i : i + 1], others)
            torch.testing.assert_close(batched[:, i], single, atol=1e-5, rtol=1e-5)


def _naive_read(mk: torch.Tensor, qk: torch.Tensor, mv: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Per query pixel, straight from the formula: mk [Ck,N], qk [Ck,Q], mv [Cv,N] -> [Cv,Q]."""
    ck, n = mk.shape
    out = torch.zeros(mv.shape[0], qk.shape[1], dtype=torch.float64)
    for q in range(qk.shape[1]):
        scores = [
            (2 * float(mk[:, i] @ qk[:, q]) - float(mk[:, i] @ mk[:, i])) / math.sqrt(ck) for i in range(n)
        ]
        keep = sorted(range(n), key=lambda i: -scores[i])[: top_k or n]
        weights = {i: math.exp(scores[i] - max(scores)) for i in keep}
        total = sum(weights.values())
        for i, w in weights.items():
            out[:, q] += mv[:, i].double() * (w / total)
    return out


@pytest.mark.parametrize("top_k", [None, 5])
def test_memory_read_matches_naive_computation(top_k: int | None) -> None:
    torch.manual_seed(1)
    mk, qk, mv = torch.randn(1, 8, 30), torch.randn(1, 8, 12), torch.randn(1, 2, 4, 30)
    fast = readout(memory_affinity(mk, qk, top_k), mv)[0]
    for obj in range(2):
        torch.testing.assert_close(
            fast[obj].double(), _naive_read(mk[0], qk[0], mv[0, obj], top_k), atol=1e-5, rtol=1e-5
        )


def test_top_k_affinity_keeps_k_entries_per_query() -> None:
    affinity = memory_affinity(torch.randn(2, 8, 40), torch.randn(2, 8, 10), top_k=20)
    assert ((affinity > 0).sum(1) == 20).all()
    torch.testing.assert_close(affinity.sum(1), torch.ones(2, 10))


def test_aggregation_sums_to_one_and_orders_background_first() -> None:
    prob = torch.tensor([[[[0.9]], [[0.1]]]])  # [1, 2, 1, 1]
    out = aggregate(prob)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 1, 1))
    odds = torch.tensor([0.1 * 0.9, 0.9, 0.1])
    odds = odds / (1 - odds)
    torch.testing.assert_close(out[0, :, 0, 0], odds / odds.sum())


def test_padding_round_trip_puts_odd_pixel_bottom_right() -> None:
    x = torch.arange(35.0).view(1, 5, 7)
    padded, pad = pad_divide_by(x, 4)
    assert padded.shape == (1, 8, 8) and pad == (0, 1, 1, 2)
    assert torch.equal(unpad(padded, pad), x)


def test_output_stride_8_keeps_the_parameters_and_rejects_other_strides() -> None:
    stride16 = STCN(load_config("tiny", overrides=["model.output_stride=16"]).model)
    stride8 = STCN(load_config("tiny", overrides=["model.output_stride=8"]).model)
    assert {k: v.shape for k, v in stride8.state_dict().items()} == {
        k: v.shape for k, v in stride16.state_dict().items()
    }
    assert stride8.key_encoder.layer3[0].conv1.stride == (1, 1)
    assert stride16.key_encoder.layer3[0].conv1.stride == (2, 2)
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 4"):
        STCN(dataclasses.replace(load_config("tiny").model, output_stride=4))


def test_save_load_round_trip_is_bit_exact(tiny: STCN, tmp_path: Path) -> None:
    save_weights(tiny, tmp_path / "w.pth")
    raw = torch.load(tmp_path / "w.pth", weights_only=True)
    assert isinstance(raw, OrderedDict) and not any(k.startswith("module.") for k in raw)
    fresh = load_checkpoint(tmp_path / "w.pth", STCN(tiny.config))
    for (name, a), b in zip(tiny.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_accepts_module_prefix_and_training_checkpoint(tiny: STCN, tmp_path: Path) -> None:
    prefixed = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({"it": 10, "network": prefixed, "optimizer": {}, "scheduler": {}}, tmp_path / "t.pth")
    model = load_model(tmp_path / "t.pth")  # preset found from the shapes
    assert model.config.value_dim == tiny.config.value_dim
    assert torch.equal(model.decoder.pred.weight, tiny.decoder.pred.weight)


def test_stage0_four_channel_checkpoint_is_expanded(tiny: STCN, tmp_path: Path) -> None:
    state = tiny.state_dict()
    state["value_encoder.conv1.weight"] = state["value_encoder.conv1.weight"][:, :4].clone()
    torch.save(state, tmp_path / "s0.pth")
    loaded = read_state_dict(tmp_path / "s0.pth")["value_encoder.conv1.weight"]
    assert loaded.shape[1] == 5
    assert torch.equal(loaded[:, :4], state["value_encoder.conv1.weight"])
    assert loaded[:, 4].abs().sum() > 0
    assert expand_value_conv1(torch.zeros(64, 4, 7, 7)).shape == (64, 5, 7, 7)


def test_not_a_checkpoint_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    with pytest.raises(UserError, match=r"notes\.pth: not a PyTorch checkpoint"):
        load_checkpoint(bad, STCN(load_config("tiny").model))
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_mismatch_lists_keys_counts_and_the_fitting_preset(tiny: STCN, tmp_path: Path) -> None:
    save_weights(tiny, tmp_path / "tiny.pth")
    with torch.device("meta"):
        big = STCN(load_config("stcn").model)
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "tiny.pth", big)
    message = str(info.value)
    assert "tiny.pth" in message and "shape mismatches" in message
    assert "use --preset tiny" in message

    state = tiny.state_dict()
    state.pop("decoder.pred.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "odd.pth", STCN(tiny.config))
    message = str(info.value)
    assert "1 missing keys: decoder.pred.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "preset" not in message.split("\n")[-1] or "fit" not in message


@pytest.mark.parametrize("preset", ["tiny", "cutie-tiny", "sam2-toy", "sam2.1-tiny"])
def test_skeleton_has_the_models_names_and_shapes(preset: str) -> None:
    config = load_config(preset).model
    expected = {k: (v.shape, v.dtype) for k, v in build_model(config).state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in build_skeleton(config).state_dict().items()} == expected


def test_telling_the_preset_of_raw_weights_does_not_import_the_compiler() -> None:
    """A published checkpoint's preset is told by building each candidate's skeleton; on the
    meta device that imported torch._dynamo (1.5-2 s of every such run's start-up)."""
    script = (
        "import sys, torch\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "from twoshot.config import load_config\n"
        "from twoshot.model import build_model\n"
        "from twoshot.model.checkpoint import matching_preset\n"
        "state = build_model(load_config('sam2-toy').model).state_dict()\n"
        "print(matching_preset(state), before, 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    preset, before, after = out.split()
    assert preset == "sam2-toy"
    if before == "True":
        pytest.skip("this torch imports torch._dynamo with torch itself")
    assert after == "False"


def _fake_torchvision_resnet(block: str, layers: list[int], width: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    trunk = ResNetTrunk(block, layers, width)
    state = {k: v + torch.rand_like(v.float()).to(v.dtype) for k, v in trunk.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.zeros(1)  # torchvision files carry layer4 and fc
    state["fc.weight"] = torch.zeros(10, 8)
    return state


def test_imagenet_backbone_weights_load_into_both_encoders(tmp_path: Path) -> None:
    cfg = load_config("tiny").model
    key_state = _fake_torchvision_resnet(cfg.key_block, cfg.key_layers, cfg.key_width, 1)
    value_state = _fake_torchvision_resnet(cfg.value_block, cfg.value_layers, cfg.value_width, 2)
    torch.save(key_state, tmp_path / "resnet50-key.pth")
    torch.save(value_state, tmp_path / "resnet18-value.pth")
    cfg.backbone_weights = f"{tmp_path / 'resnet50-key.pth'},{tmp_path / 'resnet18-value.pth'}"
    model = build_model(cfg)
    assert torch.equal(model.key_encoder.res2[0].conv1.weight, key_state["layer1.0.conv1.weight"])
    assert torch.equal(model.key_encoder.conv1.weight, key_state["conv1.weight"])
    conv1 = model.value_encoder.conv1.weight
    assert torch.equal(conv1[:, :3], value_state["conv1.weight"])
    assert conv1[:, 3:].abs().sum() > 0  # extra mask channels initialised, not zero
    assert torch.equal(model.value_encoder.layer2[0].bn1.running_var, value_state["layer2.0.bn1.running_var"])


def test_backbone_file_that_fits_nothing_is_reported(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "resnet101.pth")
    cfg = load_config("tiny").model
    cfg.backbone_weights = str(tmp_path / "resnet101.pth")
    with pytest.raises(UserError, match="resnet101.pth: fits neither"):
        build_model(cfg)


def test_channel_gate_averages_in_stcn_order() -> None:
    """CBAM's channel gate rounds as STCN's (avg_pool2d over the map, not mean()), bit for bit:
    the two orders differ by an ulp on most channels, which the float64 comparison with the
    paper's training code measured (docs/training.md)."""
    import torch.nn.functional as F

    from twoshot.model.stcn.modules import ChannelGate

    torch.manual_seed(3)
    gate = ChannelGate(64).double()
    x = torch.randn(4, 64, 6, 6, dtype=torch.float64)
    pooled = F.avg_pool2d(x, (6, 6), stride=(6, 6)).flatten(1)
    assert not torch.equal(pooled, x.mean(dim=(2, 3)))  # the data tells the two orders apart
    with torch.no_grad():
        expected = x * torch.sigmoid(gate.mlp(pooled) + gate.mlp(x.amax(dim=(2, 3))))[:, :, None, None]
        assert torch.equal(gate(x), expected)
