"""SAM 2's head switches (``model.sam2.use_high_res_features_in_sam``,
``multimask_output_in_sam``, ``multimask_output_for_tracking``): the published configs'
values by default, what each one changes in the network, the training forward, tracking
and click prompts, and refusal of bad values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from twoshot.config import ModelConfig, load_config, to_dict
from twoshot.data.fixtures import random_video
from twoshot.demo import SAM2_FULL, demo_config
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine
from twoshot.model import load_model
from twoshot.model.checkpoint import save_weights
from twoshot.model.sam2 import Sam2
from twoshot.model.sam2.prompt import PromptSegmenter
from twoshot.model.sam2.spec import SWITCHES, Sam2Sizes, sam2_sizes, sam2_train_settings
from twoshot.model.sam2.train_forward import training_forward

S = 64


def toy(*overrides: str) -> Sam2:
    torch.manual_seed(0)
    config = load_config("sam2-toy", overrides=[f"model.sam2.image_size={S}", *overrides])
    model = Sam2(config.model).eval()
    with torch.no_grad():  # random weights see every object: the masks are not all empty
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(4.0)
    return model


def published_toy() -> Sam2:
    """The toy with the published configs' switches, whatever the preset sets."""
    return toy(*(f"model.sam2.{key}=true" for key in SWITCHES))


class DecoderCalls:
    """Records the ``multimask`` and ``dynamic`` arguments of every mask-decoder call."""

    def __init__(self, model: Sam2) -> None:
        self.multimask: list[bool] = []
        self.dynamic: list[bool] = []
        decoder = model.sam_mask_decoder
        original = decoder.forward

        def spy(*args: object, **kwargs: object) -> object:
            self.multimask.append(bool(args[4]))
            self.dynamic.append(bool(kwargs.get("dynamic", True)))
            return original(*args, **kwargs)  # type: ignore[arg-type]

        decoder.forward = spy  # type: ignore[method-assign]


def test_defaults_are_the_published_configs() -> None:
    sizes = Sam2Sizes()
    assert [getattr(sizes, key) for key in SWITCHES] == [True, True, True, True]
    model = Sam2("toy")
    assert {"sam_mask_decoder.conv_s0.weight", "sam_mask_decoder.conv_s1.bias"} <= set(model.state_dict())
    features = model.encode_image(torch.zeros(1, 3, 128, 128))
    assert [tuple(x.shape) for x in features.high_res] == [(1, 32, 32, 32), (1, 64, 16, 16)]


def test_without_high_res_features_the_decoder_upscales_the_conditioned_features_alone() -> None:
    with_skips = published_toy()
    without = toy("model.sam2.use_high_res_features_in_sam=false")
    missing = set(with_skips.state_dict()) - set(without.state_dict())
    assert missing == {f"sam_mask_decoder.conv_s{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert set(without.state_dict()) < set(with_skips.state_dict())
    without.load_state_dict({k: v for k, v in with_skips.state_dict().items() if k not in missing})
    features = without.encode_image(torch.randn(2, 3, S, S))
    assert features.high_res == []
    # The same weights with zero skip maps add nothing while upscaling: the same masks.
    zeros = [torch.zeros(2, 32, S // 4, S // 4), torch.zeros(2, 64, S // 8, S // 8)]
    image = torch.randn(2, 256, S // 16, S // 16)
    with torch.no_grad():
        expected = with_skips.sam_heads(image, zeros, multimask=True)
        got = without.sam_heads(image, features.high_res, multimask=True)
    assert torch.equal(got.high_res, expected.high_res)
    assert torch.equal(got.obj_ptr, expected.obj_ptr)


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_multimask_replaces_unstable_single_masks_only_when_on(dynamic: bool) -> None:
    model = toy(f"model.sam2.dynamic_multimask_via_stability={str(dynamic).lower()}")
    features = model.encode_image(torch.randn(4, 3, S, S))
    image = torch.randn(4, 256, S // 16, S // 16)
    prompts = model.sam_prompt_encoder
    points = (torch.zeros(4, 1, 2), -torch.ones(4, 1, dtype=torch.int32))
    with torch.no_grad():
        got = model.sam_heads(image, features.high_res, multimask=False)
        sparse, dense = prompts(points, None)
        masks, _, _, _ = model.sam_mask_decoder.predict(
            image, prompts.dense_positions(), sparse, dense, features.high_res
        )
    single = torch.nn.functional.interpolate(masks[:, 0:1], size=(S, S), mode="bilinear", align_corners=False)
    same = [torch.equal(got.high_res[i], single[i]) for i in range(4)]
    # Random weights give unstable single masks (logits near 0): replaced when on, kept when off.
    assert same == [not dynamic] * 4


def test_multimask_follows_the_reference_rule() -> None:
    # The reference's _use_multimask with the published 0..1 points: in_sam and (initial or
    # for_tracking) and points <= 1.
    for in_sam in (False, True):
        for tracking in (False, True):
            model = toy(
                f"model.sam2.multimask_output_in_sam={str(in_sam).lower()}",
                f"model.sam2.multimask_output_for_tracking={str(tracking).lower()}",
            )
            for initial in (False, True):
                for points in (0, 1, 2, 3):
                    expected = in_sam and (initial or tracking) and points <= 1
                    assert model.use_multimask(initial, points) is expected, (
                        in_sam,
                        tracking,
                        initial,
                        points,
                    )


def test_single_mask_tracking_trains_on_the_decoders_single_mask() -> None:
    model = toy("model.sam2.multimask_output_for_tracking=false")
    calls = DecoderCalls(model)
    rgb = torch.randn(1, 3, 3, S, S)
    first = torch.zeros(1, 2, S, S)
    first[0, 0, 8:30, 10:40] = 1
    first[0, 1, 40:60, 36:60] = 1
    with torch.no_grad():
        _, _, aux = training_forward(model, rgb, first, torch.ones(1, 2))
    # Frame 0: two mask prompts (pointers); frames 1, 2: one tracking call each, single mask.
    assert calls.multimask == [False, False, False]
    assert calls.dynamic == [True, False, False]  # the reference trains on mask token 0 as is
    masks, ious = aux["masks"], aux["ious"]
    assert masks.shape == (1, 3, 2, 3, S, S) and ious.shape == (1, 3, 2, 3)
    for m in (1, 2):  # the one mask stands in all three places the loss picks from
        assert torch.equal(masks[:, 1:, :, m], masks[:, 1:, :, 0])
        assert torch.equal(ious[:, 1:, :, m], ious[:, 1:, :, 0])
    multimask = toy()
    calls = DecoderCalls(multimask)
    with torch.no_grad():
        _, _, aux = training_forward(multimask, rgb, first, torch.ones(1, 2))
    assert calls.multimask == [False, True, True]
    assert not torch.equal(aux["masks"][:, 1:, :, 1], aux["masks"][:, 1:, :, 0])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), True),
        (("model.sam2.multimask_output_for_tracking=false",), False),
        (("model.sam2.multimask_output_in_sam=false",), False),
    ],
)
def test_tracking_uses_the_configured_number_of_masks(overrides: tuple[str, ...], expected: bool) -> None:
    model = toy("model.sam2.use_high_res_features_in_sam=false", *overrides)
    frames, labels = random_video(4, (S, S), object_ids=(1,), seed=2)
    calls = DecoderCalls(model)
    config = load_config("sam2-toy").inference
    result = PropagationEngine(model, config, "cpu").propagate(frames, {0: labels[0]})
    assert result.masks.shape == (4, S, S)
    # The given frame prompts with its mask (one mask), each of the 3 later frames tracks.
    assert calls.multimask == [False] + [expected] * 3


@pytest.mark.parametrize("in_sam", [True, False])
def test_clicks_take_three_masks_for_one_point_only_with_multimask_in_sam(in_sam: bool) -> None:
    model = toy(f"model.sam2.multimask_output_in_sam={str(in_sam).lower()}")
    segmenter = PromptSegmenter(model, load_config("sam2-toy").inference, fill_hole_area=0)
    rgb = np.random.default_rng(0).integers(0, 255, (S, S, 3), dtype=np.uint8)
    calls = DecoderCalls(model)
    logits, chain = segmenter.segment(segmenter.features(rgb), [(20, 20, 1), (40, 40, 0)], (S, S))
    assert logits.shape == (S, S) and len(chain) == 2
    assert calls.multimask == [in_sam, False]


def test_trained_weights_load_with_the_switches_saved_beside_them(tmp_path: Path) -> None:
    overrides = [f"model.sam2.image_size={S}", "model.sam2.use_high_res_features_in_sam=false"]
    config = load_config("sam2-toy", overrides=overrides)
    model = Sam2(config.model)
    path = tmp_path / "final.pth"
    save_weights(model, path)
    (tmp_path / "config.json").write_text(json.dumps({"config": to_dict(config)}))  # as twoshot train
    loaded = load_model(path)
    assert isinstance(loaded, Sam2) and not loaded.use_high_res_features
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="4 missing keys: sam_mask_decoder.conv_s0.weight, "):
        load_model(path, published_toy().config)


@pytest.mark.parametrize("key", SWITCHES)
def test_bad_values_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(UserError, match=f"config key 'model.sam2.{key}' expects bool, got 3"):
        load_config("sam2-toy", overrides=[f"model.sam2.{key}=3"])
    config = ModelConfig(kind="sam2")
    sizes = sam2_sizes(config)
    sizes.size = "toy"
    setattr(sizes, key, "yes")
    with pytest.raises(UserError, match=f"^config key 'model.sam2.{key}': must be true or false, got 'yes'$"):
        Sam2(config)


def test_the_demo_trains_the_toy_at_192_on_moving_static_clips_with_one_mask(tmp_path: Path) -> None:
    config = demo_config(SAM2_FULL, tmp_path, tmp_path / "run", "cpu", "sam2")
    sizes = sam2_sizes(config.model)
    assert (sizes.size, sizes.image_size) == ("toy_wide", 192)
    assert [getattr(sizes, key) for key in SWITCHES] == [False, False, True, False]
    assert sam2_train_settings(config.static).mask_weight == sam2_train_settings(config.main).mask_weight == 1
    assert config.main.lr == 3e-4 and config.static.lr == 5e-4
    assert (config.static.translate, config.main.translate) == (0.15, 0.0)
    assert (config.static.num_objects, config.main.num_objects) == (2, 1)
    assert Sam2(config.model).image_encoder.trunk.patch_embed.proj.out_channels == 32
    assert config.static.iterations == SAM2_FULL.static_iterations == 360
    assert config.main.iterations == SAM2_FULL.iterations == 30
    # The preset itself keeps the published configs' switches (the reference checks use it).
    preset = sam2_sizes(load_config("sam2-toy").model)
    assert [getattr(preset, key) for key in SWITCHES] == [True, True, True, True]
    assert not Sam2(config.model).use_multimask(initial=False, num_points=0)
