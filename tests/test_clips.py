"""Training clips: augmentation geometry, VOS and static clip datasets, determinism, errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import twoshot.data.masks as masks_module
from helpers import BLUE_BG, CROP, GREEN, NO_COLOUR, RED, draw_frame, make_video, uniform_neighbourhood
from twoshot.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipAugment,
    Jitter,
    to_normalized_tensor,
)
from twoshot.data.batch import ClipBatch, collate_clips
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import write_frame, write_mask
from twoshot.data.static_augment import StaticClipAugment, shift_image
from twoshot.data.static_clips import StaticClipDataset, find_static_pairs
from twoshot.data.vos_clips import VOSClipDataset
from twoshot.errors import UserError


def denormalize(rgb: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] normalised -> uint8-range float [T, H, W, 3]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((rgb * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def color_mask(images: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Pixels (of [..., 3] images) nearer to ``color`` than to the other two scene colours."""
    palette = np.array([RED, GREEN, BLUE_BG], dtype=np.float32)
    distance = ((images[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    return distance.argmin(-1) == [RED, GREEN, BLUE_BG].index(color)


# ---------------------------------------------------------------- augmentation geometry


def shifted_ious(from_mask: np.ndarray, from_colour: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of the colour-derived mask with the label mask moved by each 1-pixel shift."""
    ious = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = np.roll(from_mask, (dy, dx), (0, 1))
            ious[(dy, dx)] = (moved & from_colour).sum() / (moved | from_colour).sum()
    return ious


@pytest.mark.parametrize("rotate", [True, False])
def test_image_and_mask_get_the_same_geometry(rotate):
    image, labels = draw_frame(90, 120, 0)
    augment = dataclasses.replace(ClipAugment(64), **NO_COLOUR)
    if not rotate:  # crop, resize and flip only: edges stay straight, so the fit is exact
        augment = dataclasses.replace(augment, rotate=0.0, shear=0.0)
    classes = {1: BLUE_BG, 2: RED, 3: GREEN}  # labels shifted by one: 0 is the warp's fill
    interior_total, per_shift = 0.0, {}
    for seed in range(30):
        pixels, out = augment(np.random.default_rng(seed), [image] * 3, [labels + 1] * 3)
        for t in range(3):
            interior = uniform_neighbourhood(out[t])
            interior_total += interior.mean()
            # away from edges (2 px: resampling blur), every pixel's colour matches its label
            for label, colour in classes.items():
                assert color_mask(pixels[t], colour)[interior & (out[t] == label)].all(), seed
            fill = pixels[t][interior & (out[t] == 0)].astype(int)
            assert np.abs(fill - np.array([124, 116, 104])).max(initial=0) <= 1
            # at the edges: the label mask fits the colours, better than shifted by a pixel
            for label, colour in ((2, RED), (3, GREEN)):
                if (out[t] == label).sum() < 300:
                    continue
                ious = shifted_ious(out[t] == label, color_mask(pixels[t], colour))
                assert ious[(0, 0)] > (0.85 if rotate else 0.99), (seed, t, ious)
                for shift, iou in ious.items():
                    per_shift.setdefault(shift, []).append(iou)
    assert interior_total / 90 > 0.6
    means = {shift: float(np.mean(v)) for shift, v in per_shift.items()}
    best_shifted = max(v for k, v in means.items() if k != (0, 0))
    assert means[(0, 0)] > best_shifted + 0.03, means


def test_frames_of_a_clip_share_crop_and_flip_but_not_the_affine():
    image, labels = draw_frame(90, 120, 0)
    augment = dataclasses.replace(ClipAugment(64), **NO_COLOUR)
    pixels, out = augment(np.random.default_rng(0), [image] * 3, [labels] * 3)
    assert not np.array_equal(out[0], out[1])  # per-frame rotation / shear
    still = dataclasses.replace(augment, rotate=0.0, shear=0.0)
    pixels, out = still(np.random.default_rng(0), [image] * 3, [labels] * 3)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    assert np.array_equal(pixels[0], pixels[2])


def test_static_warp_keeps_image_and_mask_aligned_with_tps():
    image, labels = draw_frame(70, 90, 0, objects=1)
    augment = dataclasses.replace(
        StaticClipAugment(48),
        clip_jitter=Jitter(),
        frame_jitter=Jitter(),
        grayscale_p=0.0,
        tps_p=1.0,
        tps_scale=0.03,
    )
    for seed in range(10):
        pixels, out = augment(np.random.default_rng(seed), image, labels == 1)
        assert pixels.shape == (3, 48, 48, 3) and out.shape == (3, 48, 48)
        from_colour = color_mask(pixels, RED)
        union = (from_colour | (out == 1)).sum()
        assert union > 0 and (from_colour & (out == 1)).sum() / union > 0.85


def test_shift_image_moves_by_whole_pixels_and_fills_the_rest():
    image = np.arange(20, dtype=np.uint8).reshape(4, 5)
    moved = shift_image(image, 2, -1, 99)
    expected = np.full((4, 5), 99, dtype=np.uint8)
    expected[0:3, 2:5] = image[1:4, 0:3]
    np.testing.assert_array_equal(moved, expected)
    colour = np.stack([image] * 3, axis=-1)
    np.testing.assert_array_equal(shift_image(colour, 2, -1, (99, 99, 99))[..., 1], expected)
    assert (shift_image(image, 5, 0, 7) == 7).all()
    np.testing.assert_array_equal(shift_image(image, 0, 0, 7), image)


def _still_static_augment(size: int, translate: float) -> StaticClipAugment:
    """STCN's static augmentation without colour, warps or scaling: only the shift moves."""
    return dataclasses.replace(
        StaticClipAugment(size),
        clip_jitter=Jitter(),
        frame_jitter=Jitter(),
        grayscale_p=0.0,
        hflip_p=0.0,
        shared_scale=(1.0, 1.0),
        frame_scale=(1.0, 1.0),
        rotate=0.0,
        shear=0.0,
        tps_p=0.0,
        translate=translate,
    )


def test_static_translate_shifts_each_frame_with_its_mask_within_reach():
    image, labels = draw_frame(48, 48, 0, objects=1)
    mask = labels == 1
    rows, cols = np.nonzero(mask)
    assert np.array_equal(_still_static_augment(48, 0.0)(np.random.default_rng(0), image, mask)[1][2], mask)
    reach = round(0.25 * 48)
    offsets = set()
    for seed in range(20):
        pixels, out = _still_static_augment(48, 0.25)(np.random.default_rng(seed), image, mask)
        for t in range(3):
            assert np.array_equal(out[t] == 1, color_mask(pixels[t], RED))
            moved_rows, moved_cols = np.nonzero(out[t])
            dy, dx = moved_rows.min() - rows.min(), moved_cols.min() - cols.min()
            assert abs(dy) <= reach and abs(dx) <= reach
            assert out[t].sum() >= 0.5 * mask.sum()
            offsets.add((int(dy), int(dx)))
    assert len(offsets) > 20  # frames move independently, not by one shift per clip


def test_static_translate_keeps_half_an_object_at_the_border_in_view():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:] = BLUE_BG
    image[:10, :10] = RED
    mask = np.zeros((40, 40), dtype=bool)
    mask[:10, :10] = True
    for seed in range(20):
        pixels, out = _still_static_augment(40, 0.45)(np.random.default_rng(seed), image, mask)
        assert all(out[t].sum() >= 50 for t in range(3)), seed


def test_normalisation():
    images = np.full((2, 4, 5, 3), 255, dtype=np.uint8)
    images[1] = 0
    tensor = to_normalized_tensor(images)
    assert tensor.shape == (2, 3, 4, 5) and tensor.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(tensor[0, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(tensor[1, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))


# ---------------------------------------------------------------- VOS clip datasets


def check_sample(sample: ClipBatch, size: int = CROP, slots: int = 2) -> None:
    """A dataset item: a ClipBatch of one 3-frame clip with ``slots`` object slots."""
    assert sample.size == 1 and sample.num_objects == slots
    assert sample.rgb.shape == (1, 3, 3, size, size) and sample.rgb.dtype == torch.float32
    assert sample.first_masks.shape == (1, slots, size, size) and sample.first_masks.dtype == torch.float32
    assert sample.cls_gt.shape == (1, 3, size, size) and sample.cls_gt.dtype == torch.int64
    assert sample.selector.shape == (1, slots) and sample.selector.dtype == torch.float32
    assert sample.labeled.shape == (1, 3) and sample.labeled.dtype == torch.bool
    assert bool(sample.labeled[0, 0])
    assert len(sample.names) == 1 and sample.frames.shape == (1, 3) and sample.frames.dtype == torch.int64
    masks, cls, present = sample.first_masks[0], sample.cls_gt[0], sample.selector[0]
    assert not torch.any(masks.sum(0) > 1)  # slots do not overlap
    expected = torch.zeros_like(cls[0])
    for slot in range(slots):
        expected[masks[slot] > 0] = slot + 1
    assert torch.equal(cls[0], expected)
    for t in range(1, 3):
        if not sample.labeled[0, t]:
            assert torch.all(cls[t] == -1)
        else:
            assert cls[t].min() >= 0 and cls[t].max() <= slots
    assert present[0] == 1
    filled = int(present.sum())
    assert present.tolist() == [1.0] * filled + [0.0] * (slots - filled)  # present slots first
    for slot in range(1, slots):  # an object slot is filled with an object of frame 0
        assert (masks[slot].sum() > 0) == bool(present[slot])


@pytest.mark.parametrize("sampling", ["full", "labeled_only", "phase1", "bank"])
def test_sample_format_in_every_sampling(tmp_path, sampling):
    videos = [
        make_video(tmp_path, "a", labeled=None if sampling in ("full", "bank") else [1, 6]),
        make_video(tmp_path, "b", objects=1, labeled=None if sampling in ("full", "bank") else [0, 5]),
    ]
    dataset = VOSClipDataset(videos, CROP, sampling=sampling, seed=1, repeats=3)
    assert len(dataset) == 6
    for index in range(len(dataset)):
        sample = dataset[index]
        check_sample(sample)
        name, frames = sample.names[0], sample.frames[0].tolist()
        assert name == ("a", "b")[index % 2]
        assert sample.first_masks[0, 0].sum() > 0  # the target is an object of the first frame
        if name == "b":
            assert sample.selector.tolist() == [[1.0, 0.0]] and sample.first_masks[0, 1].sum() == 0
        if sampling in ("labeled_only", "phase1"):
            labeled = {"a": {1, 6}, "b": {0, 5}}[name]
            assert frames[0] in labeled
            flags = [f in labeled for f in frames]
            assert sample.labeled[0].tolist() == flags
            if sampling == "labeled_only":
                assert all(flags)
        else:
            assert sample.labeled.all()
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_two_objects_give_a_second_object(tmp_path):
    no_colour = dataclasses.replace(ClipAugment(CROP), **NO_COLOUR)  # grayscale would hide it
    dataset = VOSClipDataset(
        [make_video(tmp_path, "a", size=(48, 48))], CROP, seed=3, repeats=20, augment=no_colour
    )
    samples = [dataset[i] for i in range(20)]
    with_second = [s for s in samples if s.selector[0, 1] == 1]
    assert len(with_second) >= 10
    for sample in with_second:
        assert (sample.cls_gt[0, 0] == 2).any() and (sample.cls_gt[0, 0] == 1).any()
    # either object may be the target: the target region of frame 0 is red in some samples
    # (object 1) and green in others (object 2); the second object has the other colour
    kinds = set()
    for sample in with_second:
        first = denormalize(sample.rgb[0])[0]
        target = first[sample.first_masks[0, 0].numpy() > 0].mean(0)
        second = first[sample.first_masks[0, 1].numpy() > 0].mean(0)
        target_red = bool(target[0] > target[1])
        assert target_red != bool(second[0] > second[1])
        kinds.add(target_red)
    assert kinds == {True, False}


STRIPE_COLOURS = {1: (230, 30, 30), 2: (30, 210, 40), 3: (40, 60, 230), 4: (240, 230, 40)}


def make_striped_video(root: Path, name: str, objects: int, num_frames: int = 6) -> VideoSequence:
    """Vertical stripes 4 px wide of ``objects`` objects in turn, one colour each: every crop
    of frame 0 shows every object."""
    frame_dir, mask_dir = root / "JPEGImages" / name, root / "Annotations" / name
    frame_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    labels = np.broadcast_to((np.arange(56) // 4) % objects + 1, (40, 56)).astype(np.uint8)
    image = np.array([STRIPE_COLOURS[int(o)] for o in labels.flat], dtype=np.uint8).reshape(40, 56, 3)
    names = [f"{t:05d}" for t in range(num_frames)]
    for stem in names:
        write_frame(frame_dir / f"{stem}.png", image)
        write_mask(mask_dir / f"{stem}.png", labels)
    return VideoSequence(
        name=name,
        frame_paths=[frame_dir / f"{n}.png" for n in names],
        frame_names=names,
        mask_paths={t: mask_dir / f"{n}.png" for t, n in enumerate(names)},
    )


def test_up_to_num_objects_distinct_objects_per_clip(tmp_path):
    no_colour = dataclasses.replace(ClipAugment(CROP), **NO_COLOUR)
    videos = [make_striped_video(tmp_path, "four", 4), make_striped_video(tmp_path, "two", 2)]
    dataset = VOSClipDataset(videos, CROP, seed=7, repeats=40, augment=no_colour, num_objects=3)
    subsets, first_slot = set(), set()
    for index in range(len(dataset)):
        sample = dataset[index]
        check_sample(sample, slots=3)
        assert sample.object_ids is not None
        ids = sample.object_ids[0].tolist()
        if sample.names[0] == "four":  # 4 objects in every crop: 3 distinct of them
            assert sample.selector.tolist() == [[1.0, 1.0, 1.0]]
            assert len(set(ids)) == 3 and set(ids) <= {1, 2, 3, 4}
            subsets.add(frozenset(ids))
            first_slot.add(ids[0])
        else:  # 2 objects: both, and an empty third slot
            assert sample.selector.tolist() == [[1.0, 1.0, 0.0]]
            assert sorted(ids[:2]) == [1, 2] and ids[2] == -1
        # Slot k holds the object ids[k]: its pixels in frame 0 have that object's colour.
        frame = denormalize(sample.rgb[0])[0]
        for slot, obj in enumerate(ids):
            if obj > 0:
                colour = frame[sample.first_masks[0, slot].numpy() > 0].mean(0)
                assert np.abs(colour - np.array(STRIPE_COLOURS[obj])).max() < 40
    assert len(subsets) == 4 and first_slot == {1, 2, 3, 4}  # any 3 of the 4, in any order
    with pytest.raises(UserError, match="num_objects=0"):
        VOSClipDataset(videos, CROP, num_objects=0)


def test_phase1_opens_only_budgeted_annotations(tmp_path, monkeypatch):
    budget = [2, 9]
    videos = [make_video(tmp_path, name, num_frames=12, labeled=budget) for name in ("a", "b")]
    for video in videos:  # a real user's dataset has PNGs for the labeled frames only
        for png in (tmp_path / "Annotations" / video.name).glob("*.png"):
            if int(png.stem) not in budget:
                png.unlink()
    allowed = {str(p) for v in videos for p in v.mask_paths.values()}
    opened: list[str] = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(masks_module.Image, "open", spy)
    listed: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(str(p)) or real_listdir(p))
    monkeypatch.setattr(os, "scandir", lambda p=".": listed.append(str(p)) or real_scandir(p))

    dataset = VOSClipDataset(videos, CROP, sampling="phase1", seed=0, repeats=20, max_skip=3)
    unlabeled_seen = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        check_sample(sample)
        unlabeled_seen += int((~sample.labeled).sum())
    pngs = [p for p in opened if p.endswith(".png")]
    assert pngs and set(pngs) <= allowed
    assert unlabeled_seen > 0
    assert not listed


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_phase1_labeled_clip_share(tmp_path, share):
    """The share of phase-1 samples that are labeled-only clips (every frame a budget frame)."""
    budget = [2, 9]
    videos = [make_video(tmp_path, name, num_frames=12, labeled=budget) for name in ("a", "b")]
    dataset = VOSClipDataset(
        videos, CROP, sampling="phase1", seed=0, repeats=40, max_skip=11, labeled_clip_share=share
    )
    all_labeled = [bool(dataset[i].labeled.all()) for i in range(len(dataset))]
    for index, labeled in enumerate(all_labeled):
        if labeled:
            assert set(dataset[index].frames[0].tolist()) <= set(budget)
    fraction = sum(all_labeled) / len(all_labeled)
    if share == 1.0:
        assert fraction == 1.0
    elif share == 0.0:
        # A reference phase-1 clip is all labeled only when both other frames hit the budget.
        assert fraction < 0.1
    else:
        assert 0.35 < fraction < 0.7


def test_labeled_clip_share_must_be_a_probability(tmp_path):
    video = make_video(tmp_path, "a", num_frames=12, labeled=[2, 9])
    with pytest.raises(UserError, match="labeled_clip_share must be in"):
        VOSClipDataset([video], CROP, sampling="phase1", labeled_clip_share=1.5)


def test_max_skip_and_epoch_setters(tmp_path):
    video = make_video(tmp_path, "a", num_frames=30, size=(24, 24), objects=1)
    dataset = VOSClipDataset([video], 16, seed=5, repeats=40)
    spans = [int(dataset[i].frames.max() - dataset[i].frames.min()) for i in range(40)]
    assert max(spans) <= 2 * 6
    dataset.set_max_skip(25)
    spans = [int(dataset[i].frames.max() - dataset[i].frames.min()) for i in range(40)]
    assert max(spans) > 12
    youtube = VOSClipDataset([video], 16, max_skip=25, annotation_stride=5)
    assert youtube.max_skip == 5
    youtube.set_max_skip(5)
    assert youtube.max_skip == 1
    first = dataset[0].rgb
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0].rgb, first)
    dataset.set_epoch(0)
    assert torch.equal(dataset[0].rgb, first)


def batches(dataset, workers: int) -> list[ClipBatch]:
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_clips)
    return list(loader)


def assert_same_batches(a: list[ClipBatch], b: list[ClipBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for field in dataclasses.fields(ClipBatch):
            p, q = getattr(x, field.name), getattr(y, field.name)
            assert torch.equal(p, q) if isinstance(p, torch.Tensor) else p == q, field.name


def test_bit_identical_batches_with_two_workers(tmp_path):
    videos = [make_video(tmp_path, n, num_frames=10, labeled=[1, 7]) for n in ("a", "b", "c")]
    dataset = VOSClipDataset(videos, CROP, sampling="phase1", seed=9, repeats=2)
    dataset.set_epoch(3)
    first = batches(dataset, 2)
    assert_same_batches(first, batches(dataset, 2))
    assert_same_batches(first, batches(dataset, 0))  # and the same without workers
    assert first[0].rgb.shape == (2, 3, 3, CROP, CROP)
    assert first[0].labeled.shape == (2, 3) and first[0].object_ids.shape == (2, 2)


# ---------------------------------------------------------------- static clips


def write_gray_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(path)


def static_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = draw_frame(36, 44, seed % 5, objects=1)
    return image, labels == 1


def make_static_layouts(root: Path) -> dict[str, int]:
    """Write each supported layout under ``root``; returns pairs per layout folder."""
    image, mask = static_pair(0)
    for i in range(3):  # same folder, indexed masks (our generated data)
        write_frame(root / "flat" / f"im{i}.jpg", image)
        write_mask(root / "flat" / f"im{i}.png", mask.astype(np.uint8))
    for cls in ("cat", "dog"):  # FSS: <class>/<n>.jpg + <class>/<n>.png, 0/255 masks
        for i in (1, 2):
            write_frame(root / "fss" / cls / f"{i}.jpg", image)
            write_gray_mask(root / "fss" / cls / f"{i}.png", mask)
    for i in range(2):  # DUTS
        write_frame(root / "DUTS-TR" / "DUTS-TR-Image" / f"ILSVRC_{i}.jpg", image)
        write_gray_mask(root / "DUTS-TR" / "DUTS-TR-Mask" / f"ILSVRC_{i}.png", mask)
    for i in range(2):  # ECSSD
        write_frame(root / "ecssd" / "images" / f"{i:04d}.jpg", image)
        write_gray_mask(root / "ecssd" / "ground_truth_mask" / f"{i:04d}.png", mask)
    return {"flat": 3, "fss": 4, "DUTS-TR": 2, "ecssd": 2}


def test_static_clips_from_each_layout(tmp_path):
    counts = make_static_layouts(tmp_path)
    pairs = find_static_pairs(tmp_path)
    assert len(pairs) == sum(counts.values())
    for layout, count in counts.items():
        dataset = StaticClipDataset(tmp_path / layout, CROP, seed=2)
        assert len(dataset) == count
        for index in range(len(dataset)):
            sample = dataset[index]
            check_sample(sample)
            assert sample.selector.tolist() == [[1.0, 0.0]] and sample.first_masks[0, 1].sum() == 0
            assert set(sample.cls_gt.unique().tolist()) <= {0, 1}
            assert sample.first_masks.sum() > 0 and sample.labeled.all()
            assert sample.frames.tolist() == [[0, 0, 0]] and sample.geometry is None
    duts = StaticClipDataset(tmp_path / "DUTS-TR", CROP)
    assert [p[1].parent.name for p in duts.pairs] == ["DUTS-TR-Mask"] * 2
    # determinism: a pure function of (seed, epoch, index)
    dataset = StaticClipDataset(tmp_path, CROP, seed=4)
    again = StaticClipDataset(tmp_path, CROP, seed=4)
    assert torch.equal(dataset[5].rgb, again[5].rgb)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5].rgb, again[5].rgb)


def test_static_clips_pad_their_one_object(tmp_path):
    image, mask = static_pair(1)
    write_frame(tmp_path / "s" / "a.jpg", image)
    write_gray_mask(tmp_path / "s" / "a.png", mask)
    for slots in (1, 3):
        sample = StaticClipDataset(tmp_path / "s", CROP, num_objects=slots)[0]
        check_sample(sample, slots=slots)
        assert sample.selector.tolist() == [[1.0] + [0.0] * (slots - 1)]


def test_static_mask_binarisation(tmp_path):
    from twoshot.data.static_clips import read_binary_mask

    values = np.array([[0, 100, 128, 255]], dtype=np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "soft.png")
    assert read_binary_mask(tmp_path / "soft.png").tolist() == [[False, False, True, True]]
    Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="L").save(tmp_path / "ones.png")
    assert read_binary_mask(tmp_path / "ones.png").tolist() == [[False, True]]
    write_mask(tmp_path / "indexed.png", np.array([[0, 1, 2]], dtype=np.uint8))
    assert read_binary_mask(tmp_path / "indexed.png").tolist() == [[False, True, True]]


# ---------------------------------------------------------------- errors


def test_empty_datasets(tmp_path):
    with pytest.raises(UserError, match="empty"):
        VOSClipDataset([], CROP)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="nothing.*no image/mask pairs"):
        StaticClipDataset(tmp_path / "nothing", CROP)
    with pytest.raises(UserError, match="not found"):
        StaticClipDataset(tmp_path / "missing", CROP)


def test_short_videos_are_skipped_with_a_warning_or_refused(tmp_path):
    good = make_video(tmp_path, "good")
    short = make_video(tmp_path, "short", num_frames=2)
    with pytest.warns(UserWarning, match="short"):
        dataset = VOSClipDataset([good, short], CROP)
    assert [v.name for v in dataset.videos] == ["good"]
    with pytest.raises(UserError, match="short.*2 frames"):
        VOSClipDataset([short], CROP)
    unlabeled = make_video(tmp_path, "bare", labeled=[])
    with pytest.raises(UserError, match="bare.*no annotated frame"):
        VOSClipDataset([unlabeled], CROP, sampling="phase1")


def test_video_without_any_object(tmp_path):
    empty = make_video(tmp_path, "blank", empty_masks=True)
    dataset = VOSClipDataset([empty], CROP)
    with pytest.raises(UserError, match="blank.*no object"):
        dataset[0]
    with pytest.raises(UserError, match="blank"):
        dataset.validate_masks()
    image, mask = static_pair(0)
    write_frame(tmp_path / "s" / "a.jpg", image)
    write_gray_mask(tmp_path / "s" / "a.png", mask * 0)
    static = StaticClipDataset(tmp_path / "s", CROP)
    with pytest.raises(UserError, match="a.png.*no object"):
        static[0]
    with pytest.raises(UserError, match="a.png"):
        static.validate_masks()


def test_unreadable_and_missing_files(tmp_path):
    video = make_video(tmp_path, "broken", num_frames=3)
    video.frame_paths[0].write_bytes(b"not an image")
    video.frame_paths[1].write_bytes(b"not an image")
    video.frame_paths[2].write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken/0000[0-2].jpg: cannot read image"):
        VOSClipDataset([video], CROP)[0]
    gone = make_video(tmp_path, "gone")
    gone.frame_paths[3].unlink()
    with pytest.raises(UserError, match="gone.*00003.jpg does not exist"):
        VOSClipDataset([gone], CROP)
    bank = make_video(tmp_path, "holey", labeled=[0, 1, 2, 4, 5, 6, 7])
    with pytest.raises(UserError, match="holey.*no mask for frame 00003"):
        VOSClipDataset([bank], CROP, sampling="bank")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.jpg").write_bytes(b"junk")
    write_gray_mask(tmp_path / "s" / "x.png", static_pair(0)[1])
    with pytest.raises(UserError, match="x.jpg: cannot read image"):
        StaticClipDataset(tmp_path / "s", CROP)[0]
    with pytest.raises(UserError, match="unknown clip sampling"):
        VOSClipDataset([make_video(tmp_path, "ok")], CROP, sampling="dense")


def test_mask_size_must_match_its_frame(tmp_path):
    video = make_video(tmp_path, "sizes", num_frames=3)
    for path in video.mask_paths.values():
        write_mask(path, np.ones((10, 10), dtype=np.uint8))
    with pytest.raises(UserError, match="0000[0-2].png: mask is 10x10 but frame .* is 56x40"):
        VOSClipDataset([video], CROP)[0]
