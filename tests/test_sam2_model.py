"""SAM 2.1 network: parameter names and shapes of the four published sizes against the
reference's lists, size validation, checkpoint recognition, loading and refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from twoshot.errors import UserError
from twoshot.model.sam2 import (
    SIZES,
    Sam2,
    Sam2Size,
    check_sam2_state,
    detect_size,
    is_sam2_state,
    load_sam2,
    size_named,
)

DATA = Path(__file__).parent / "data"
PUBLISHED = {"tiny": (471, 39.0), "small": (519, 46.1), "base_plus": (615, 80.9), "large": (903, 224.4)}


def reference_entries(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every entry of the reference's state dict, in its order (shapes written
    ``7x1x1x64`` in the SAM 2 lists, ``[64, 3, 7, 7]`` in the STCN / Cutie ones)."""
    rows = (line.rstrip("\n").split("\t") for line in (DATA / f"{name}_state_dict_keys.tsv").open())
    return [(key, tuple(int(d) for d in re.findall(r"\d+", shape))) for key, shape in rows]


def meta_state(entries: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """A state dict of shapeless-storage tensors with the given names and shapes."""
    return {key: torch.empty(shape, device="meta") for key, shape in entries}


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_names_and_shapes_equal_the_reference(size: str) -> None:
    expected = reference_entries(f"sam2.1_hiera_{size}")
    with torch.device("meta"):
        model = Sam2(size)
    got = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert got == expected
    entries, millions = PUBLISHED[size]
    assert len(got) == entries
    assert round(sum(v.numel() for v in model.state_dict().values()) / 1e6, 1) == millions


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_the_reference_key_lists_are_recognised_as_their_size(size: str) -> None:
    state = meta_state(reference_entries(f"sam2.1_hiera_{size}"))
    assert is_sam2_state(state)
    assert detect_size(state) == size
    assert check_sam2_state(state, "x.pt") == size


def test_other_models_key_lists_are_not_sam2() -> None:
    for name in ("stcn", "cutie_small", "cutie_base"):
        state = meta_state(reference_entries(name))
        assert not is_sam2_state(state)
        assert detect_size(state) is None


def test_size_names_and_validation() -> None:
    assert size_named("sam2.1-base_plus") is SIZES["base_plus"]
    assert size_named("b+") is SIZES["base_plus"]
    assert size_named("sam2-toy") is SIZES["toy"]
    with pytest.raises(
        UserError,
        match="unknown SAM 2 size 'huge': choose one of toy, toy_wide, tiny, small, base_plus, large",
    ):
        size_named("huge")
    with pytest.raises(UserError, match="image_size 100 must be a positive multiple of 32"):
        SIZES["tiny"].with_image_size(100)
    with pytest.raises(
        UserError, match=r"image_size / 4 = 32 must be a multiple of the first window size 12"
    ):
        Sam2Size("bad", 16, 1, (1, 1, 1, 1), (), (12, 4, 4, 2), image_size=128)
    with pytest.raises(UserError, match=r"global_att_blocks \[12\] outside blocks 0..11"):
        Sam2Size("bad", 96, 1, (1, 2, 7, 2), (5, 12))
    with pytest.raises(UserError, match="stages and window_spec need 4 entries"):
        Sam2Size("bad", 96, 1, (1, 2, 7), (5,))
    assert SIZES["tiny"].with_image_size(256).feature_size == 16


@pytest.fixture(scope="module")
def toy() -> Sam2:
    torch.manual_seed(0)
    return Sam2("toy").eval()


def test_published_layout_and_bare_state_dicts_load_unchanged(toy: Sam2, tmp_path: Path) -> None:
    published, bare = tmp_path / "sam2.1_hiera_toy.pt", tmp_path / "bare.pt"
    torch.save({"model": toy.state_dict()}, published)
    torch.save(toy.state_dict(), bare)
    for path in (published, bare):
        loaded = load_sam2(path)
        assert loaded.size == SIZES["toy"]
        for key, value in toy.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert load_sam2(published, image_size=256).image_size == 256


def test_checkpoints_of_other_models_and_sizes_are_refused(toy: Sam2, tmp_path: Path) -> None:
    path = tmp_path / "toy.pt"
    torch.save({"model": toy.state_dict()}, path)
    with pytest.raises(UserError, match=f"^{path}: a SAM 2.1 toy checkpoint, not tiny$"):
        load_sam2(path, size="tiny")
    stcn = tmp_path / "stcn.pth"
    torch.save({k: torch.zeros(1) for k, _ in reference_entries("stcn")}, stcn)
    with pytest.raises(
        UserError, match=f"^{stcn}: not a SAM 2 checkpoint: the weights look like a stcn checkpoint"
    ):
        load_sam2(stcn)
    cutie = tmp_path / "cutie.pth"
    torch.save({k: torch.zeros(1) for k, _ in reference_entries("cutie_small")}, cutie)
    with pytest.raises(
        UserError, match=f"^{cutie}: not a SAM 2 checkpoint: the weights look like a cutie checkpoint"
    ):
        load_sam2(cutie)
    # A SAM 2 whose trunk no preset has, and one with a tensor of the wrong shape.
    state = toy.state_dict()
    odd = dict(state)
    odd["image_encoder.trunk.pos_embed"] = torch.zeros(1, 16, 9, 9)
    with pytest.raises(
        UserError, match=r"a SAM 2 checkpoint of no known size \(trunk width 16, blocks per stage "
    ):
        check_sam2_state(odd, "odd.pt")
    broken = dict(state)
    broken["memory_encoder.out_proj.bias"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(
        UserError, match=f"^{path}: does not fit SAM 2.1 toy \\(wrong shape: memory_encoder.out_proj.bias\\)$"
    ):
        load_sam2(path)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match=f"^{junk}: not a PyTorch checkpoint"):
        load_sam2(junk)
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_sam2(tmp_path / "missing.pt")


def test_clip_forward_segments_the_later_frames(toy: Sam2) -> None:
    first = torch.zeros(1, 1, 128, 128)
    first[..., 30:70, 40:90] = 1.0
    with torch.no_grad():
        logits, probs = toy.clip_forward(torch.zeros(1, 3, 3, 128, 128), first, torch.ones(1, 1))
    assert logits.shape == probs.shape == (1, 2, 2, 128, 128)
    assert torch.allclose(probs.sum(2), torch.ones(1, 2, 128, 128), atol=1e-5)
