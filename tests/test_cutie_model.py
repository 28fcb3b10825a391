"""Cutie's network: parameter names and shapes of the published models, single-object
checkpoints, ImageNet encoder loading, its configuration, and the training forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from twoshot.config import load_config
from twoshot.errors import UserError
from twoshot.model.checkpoint import load_model
from twoshot.model.cutie import Cutie, expand_single_object, is_single_object
from twoshot.model.registry import build_model
from twoshot.model.resnet import ResNetTrunk

DATA = Path(__file__).parent / "data"


def _reference_keys(name: str) -> list[tuple[str, list[int]]]:
    rows = []
    for line in (DATA / f"cutie_{name}_state_dict_keys.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, [int(x) for x in shape.strip("[]").split(",") if x.strip()]))
    return rows


@pytest.mark.parametrize(("preset", "count"), [("cutie-base", 527), ("cutie-small", 359)])
def test_state_dict_names_and_shapes_equal_the_reference(preset: str, count: int) -> None:
    with torch.device("meta"):
        model = Cutie(load_config(preset).model)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    expected = _reference_keys(preset.split("-")[1])
    assert len(expected) == count
    assert ours == expected  # same names, shapes and order


def test_a_raw_reference_state_dict_loads_strictly() -> None:
    with torch.device("meta"):
        model = Cutie(load_config("cutie-small").model)
    state = {k: torch.zeros(shape, device="meta") for k, shape in _reference_keys("small")}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def _tiny() -> Cutie:
    torch.manual_seed(0)
    return Cutie(load_config("cutie-tiny").model)


def test_single_object_weights_are_expanded_as_the_reference_does() -> None:
    model = _tiny()
    multi = model.state_dict()
    sensory_dim = model.config.cutie.sensory_dim
    single = dict(multi)
    single["mask_encoder.conv1.weight"] = multi["mask_encoder.conv1.weight"][:, :4].clone()
    single["pixel_fuser.sensory_compress.weight"] = multi["pixel_fuser.sensory_compress.weight"][
        :, :-1
    ].clone()
    assert single["pixel_fuser.sensory_compress.weight"].shape[1] == sensory_dim + 1
    assert is_single_object(single) and not is_single_object(multi)

    expanded = expand_single_object(single)
    conv = expanded["mask_encoder.conv1.weight"]
    compress = expanded["pixel_fuser.sensory_compress.weight"]
    assert conv.shape == multi["mask_encoder.conv1.weight"].shape == (16, 5, 7, 7)
    assert compress.shape == multi["pixel_fuser.sensory_compress.weight"].shape == (64, sensory_dim + 2, 1, 1)
    assert torch.equal(conv[:, :4], single["mask_encoder.conv1.weight"])
    assert torch.equal(compress[:, :-1], single["pixel_fuser.sensory_compress.weight"])
    assert conv[:, 4].abs().sum() > 0 and compress[:, -1].abs().sum() > 0  # orthogonal, not zero
    assert single["mask_encoder.conv1.weight"].shape[1] == 4  # the input is left alone
    Cutie(load_config("cutie-tiny").model).load_state_dict(expanded, strict=True)

    zero = expand_single_object(single, zero=True)
    assert torch.count_nonzero(zero["mask_encoder.conv1.weight"][:, 4]) == 0
    assert torch.count_nonzero(zero["pixel_fuser.sensory_compress.weight"][:, -1]) == 0
    again = expand_single_object(multi)  # already multi-object: the same tensors back
    assert all(again[k] is multi[k] for k in multi)


def test_single_object_expansion_at_published_sizes() -> None:
    state = {k: torch.zeros(shape) for k, shape in _reference_keys("base")}
    state["mask_encoder.conv1.weight"] = torch.zeros(64, 4, 7, 7)
    state["pixel_fuser.sensory_compress.weight"] = torch.zeros(256, 257, 1, 1)
    expanded = expand_single_object(state)
    assert expanded["mask_encoder.conv1.weight"].shape == (64, 5, 7, 7)
    assert expanded["pixel_fuser.sensory_compress.weight"].shape == (256, 258, 1, 1)


def _torchvision_resnet(block: str, layers: list[int], width: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    trunk = ResNetTrunk(block, layers, width)
    state = {k: v + torch.rand_like(v.float()).to(v.dtype) for k, v in trunk.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.zeros(1)  # torchvision files carry layer4 and fc
    state["fc.weight"] = torch.zeros(10, 8)
    return state


def test_imagenet_resnets_load_into_the_pixel_and_mask_encoders(tmp_path: Path) -> None:
    cfg = load_config("cutie-tiny").model
    cfg.key_block, cfg.key_layers = "bottleneck", [1, 1, 1]  # tell the two encoders apart
    pixel = _torchvision_resnet("bottleneck", [1, 1, 1], 16, 1)
    mask = _torchvision_resnet("basic", [1, 1, 1], 16, 2)
    torch.save(mask, tmp_path / "resnet18.pth")
    torch.save(pixel, tmp_path / "resnet50.pth")
    torch.manual_seed(3)
    before = Cutie(cfg).mask_encoder.fuser.block1.conv1.weight.clone()
    cfg.backbone_weights = str(tmp_path)  # a folder: both files, matched by shape
    torch.manual_seed(3)
    model = build_model(cfg)
    assert isinstance(model, Cutie)
    assert torch.equal(model.pixel_encoder.res2[0].conv3.weight, pixel["layer1.0.conv3.weight"])
    assert torch.equal(model.pixel_encoder.bn1.running_var, pixel["bn1.running_var"])
    conv1 = model.mask_encoder.conv1.weight
    assert torch.equal(conv1[:, :3], mask["conv1.weight"])
    assert conv1[:, 3:].abs().sum() > 0  # mask and others channels initialised, not zero
    assert torch.equal(model.mask_encoder.layer3[0].downsample[1].bias, mask["layer3.0.downsample.1.bias"])
    assert torch.equal(model.mask_encoder.fuser.block1.conv1.weight, before)  # not a trunk part


def test_one_resnet18_serves_both_encoders_of_a_small_cutie(tmp_path: Path) -> None:
    cfg = load_config("cutie-tiny").model  # both encoders basic [1, 1, 1] x 16, as Cutie-small's ResNet-18s
    state = _torchvision_resnet("basic", [1, 1, 1], 16, 4)
    torch.save(state, tmp_path / "resnet18.pth")
    cfg.backbone_weights = str(tmp_path / "resnet18.pth")
    model = build_model(cfg)
    assert torch.equal(model.pixel_encoder.res2[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(model.mask_encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "resnet101.pth")
    cfg.backbone_weights = str(tmp_path / "resnet101.pth")
    with pytest.raises(UserError, match="fits neither the pixel encoder nor the mask encoder"):
        build_model(cfg)


def test_presets_and_size_checks() -> None:
    base, small, tiny = (load_config(p) for p in ("cutie-base", "cutie-small", "cutie-tiny"))
    assert base.model.kind == small.model.kind == tiny.model.kind == "cutie"
    assert (base.model.key_block, small.model.key_block) == ("bottleneck", "basic")
    assert base.inference.top_k == 30 and base.inference.size == 480 and tiny.inference.size == -1
    assert base.main.num_frames == 8 and base.main.lr_steps == [100000, 115000]
    for override, message in [
        ("model.decoder_dims=[128, 64, 64]", "decoder_dims"),
        ("model.cutie.num_queries=7", "num_queries"),
        ("model.cutie.pixel_dim=32", "pixel_dim"),
        ("model.output_stride=8", "output_stride"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config("cutie-tiny", overrides=[override])
    with pytest.raises(
        UserError, match="'model.cutie.num_queries' is a cutie setting, but model.kind is 'stcn'"
    ):
        load_config("stcn", overrides=["model.cutie.num_queries=7"])


def test_clip_forward_segments_later_frames_and_trains() -> None:
    model = _tiny().train()
    torch.manual_seed(1)
    rgb = torch.randn(2, 5, 3, 40, 48)  # not a multiple of 16: padded and cropped back
    first = torch.zeros(2, 2, 40, 48)
    first[:, 0, 5:20, 5:20] = 1
    first[:, 1, 22:35, 25:40] = 1
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logits, probs = model.clip_forward(rgb, first, selector)
    assert logits.shape == probs.shape == (2, 4, 3, 40, 48)
    assert torch.allclose(probs.sum(2), torch.ones(2, 4, 40, 48), atol=1e-5)
    assert probs[1, :, 2].max() < 1e-5  # an absent object gets no probability
    labels = (first * torch.tensor([1.0, 2.0])[:, None, None]).sum(1).long()  # 0 bg, 1, 2
    target = labels.unsqueeze(1).expand(-1, 4, -1, -1).flatten(0, 1)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), target).backward()
    assert model.mask_encoder.conv1.weight.grad is not None
    assert model.object_transformer.blocks[1].ffn.linear1.weight.grad.abs().sum() > 0


def test_a_single_object_checkpoint_file_loads_with_its_preset_told_from_the_weights(tmp_path: Path) -> None:
    model = _tiny()
    multi = model.state_dict()
    single = {f"module.{k}": v for k, v in multi.items()}  # saved from DataParallel, as published
    single["module.mask_encoder.conv1.weight"] = multi["mask_encoder.conv1.weight"][:, :4].clone()
    compress = multi["pixel_fuser.sensory_compress.weight"]
    single["module.pixel_fuser.sensory_compress.weight"] = compress[:, :-1].clone()
    torch.save(single, tmp_path / "cutie-single.pth")
    loaded = load_model(tmp_path / "cutie-single.pth")
    assert isinstance(loaded, Cutie) and loaded.config == load_config("cutie-tiny").model
    state = loaded.state_dict()
    assert torch.equal(state["mask_encoder.conv1.weight"][:, :4], multi["mask_encoder.conv1.weight"][:, :4])
    assert torch.equal(state["pixel_encoder.conv1.weight"], multi["pixel_encoder.conv1.weight"])
