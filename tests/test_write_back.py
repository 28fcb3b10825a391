"""Phase-2 write-back of refined labels to the pseudo-label bank: the clip geometry and its
inverse, the merge rules, atomic and locked rewrites, the manifest record, the pipeline hook,
and that without write-back the bank is never touched."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import NO_COLOUR, draw_frame, make_video, toy_config, uniform_neighbourhood
from twoshot.bank import BankIdentity, BankStore, bank_sequences, video_lock
from twoshot.config import TwoShotConfig
from twoshot.data.augment import ClipAugment, crop_resize_matrix, labels_to_frame
from twoshot.data.batch import ClipBatch, collate_clips
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask
from twoshot.data.vos_clips import VOSClipDataset
from twoshot.errors import UserError
from twoshot.inference.frames import FrameOutput
from twoshot.pipeline import Pipeline
from twoshot.train.forward import ClipOutput
from twoshot.train.phases import Phase2Regime
from twoshot.train.trainer import train
from twoshot.train.write_back import NO_LABEL, merge_classes, rewrite_frame


def folder_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_bank(
    root: Path,
    videos: list[VideoSequence],
    labeled: dict[str, list[int]],
    masks: dict[str, np.ndarray],
    palette: bytes | None = None,
) -> Path:
    """A complete bank under ``root/bank`` holding ``masks[video]`` (uint8 [T, H, W])."""
    bank = root / "bank"
    identity = BankIdentity({"path": None, "sha256": "c" * 64}, {"path": None, "sha256": "b" * 64}, {})
    store = BankStore(bank, identity)
    store.check()
    store.start()
    for video in videos:
        frames = [FrameOutput(i, labels, None, [1, 2, 3]) for i, labels in enumerate(masks[video.name])]
        store.write_video(video.name, video.frame_names, labeled[video.name], [1, 2, 3], frames, palette)
    store.finish([v.name for v in videos])
    return bank


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


# ---------------------------------------------------------------- geometry round trip


def test_reported_matrices_invert_the_crop_exactly_without_rotation() -> None:
    # 40x56 frames into 64x64 crops: every crop is upsampled, so nearest sampling there and
    # back lands on the same frame pixel (flips included).
    image, labels = draw_frame(40, 56, 0)
    augment = dataclasses.replace(ClipAugment(64), rotate=0.0, shear=0.0, **NO_COLOUR)
    flips = set()
    for seed in range(20):
        clip = augment.augment_clip(np.random.default_rng(seed), [image] * 3, [labels] * 3)
        top, left, crop_h, crop_w = clip.crop_box
        flips.add(bool(clip.matrices[0, 0, 0] < 0))
        assert clip.matrices.shape == (3, 3, 3) and clip.matrices.dtype == np.float64
        for t in range(3):
            back = labels_to_frame(clip.masks[t], clip.matrices[t], clip.crop_box, (40, 56))
            inside = np.zeros_like(labels, dtype=bool)
            inside[top : top + crop_h, left : left + crop_w] = True
            assert np.array_equal(back != NO_LABEL, inside), seed
            assert np.array_equal(back[inside], labels[inside]), seed
    assert flips == {True, False}
    # __call__ is augment_clip without the geometry: same random draws, same output
    pixels, masks = augment(np.random.default_rng(3), [image] * 3, [labels] * 3)
    clip = augment.augment_clip(np.random.default_rng(3), [image] * 3, [labels] * 3)
    assert np.array_equal(pixels, clip.pixels)
    assert all(np.array_equal(a, b) for a, b in zip(masks, clip.masks))


def test_reported_matrices_invert_rotated_crops_up_to_a_thin_border() -> None:
    height, width, size = 180, 240, 96
    image, labels = draw_frame(height, width, 0)
    labels = labels + 1  # 0 is the forward warp's fill
    augment = dataclasses.replace(ClipAugment(size), **NO_COLOUR)
    agree = total = 0
    for seed in range(20):
        clip = augment.augment_clip(np.random.default_rng(seed), [image] * 3, [labels] * 3)
        top, left, crop_h, crop_w = clip.crop_box
        radius = math.ceil(max(crop_h, crop_w) / size) + 1
        inner = np.zeros((height, width), dtype=bool)
        inner[top + radius : top + crop_h - radius, left + radius : left + crop_w - radius] = True
        for t in range(3):
            back = labels_to_frame(clip.masks[t], clip.matrices[t], clip.crop_box, (height, width))
            valid = back != NO_LABEL
            assert valid.sum() > 0.8 * crop_h * crop_w  # most of the box lies in the crop
            assert not valid[:top].any() and not valid[top + crop_h :].any()
            assert not valid[:, :left].any() and not valid[:, left + crop_w :].any()
            wrong = valid & (back != labels)
            # disagreement only within a few pixels of an object edge or of the box border
            assert not (wrong & inner & uniform_neighbourhood(labels, radius)).any(), seed
            agree += int((valid & ~wrong).sum())
            total += int(valid.sum())
    assert agree / total > 0.97


def test_crop_resize_matrix_matches_the_half_pixel_convention() -> None:
    matrix = crop_resize_matrix((10, 20, 30, 40), 60)
    corner = matrix @ np.array([20 - 0.5, 10 - 0.5, 1.0])  # the box's outer corner
    far = matrix @ np.array([60 - 0.5, 40 - 0.5, 1.0])
    np.testing.assert_allclose(corner[:2], [-0.5, -0.5])
    np.testing.assert_allclose(far[:2], [59.5, 59.5])


def test_samples_carry_their_geometry_and_object_ids(tmp_path: Path) -> None:
    video = make_video(tmp_path, "a", num_frames=6)
    dataset = VOSClipDataset(
        [video],
        32,
        sampling="bank",
        seed=2,
        repeats=4,
        augment=dataclasses.replace(ClipAugment(32), **NO_COLOUR),
    )
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.geometry is not None and sample.crop_box is not None
        assert sample.frame_size is not None and sample.object_ids is not None
        assert sample.geometry.shape == (1, 3, 3, 3) and sample.geometry.dtype == torch.float64
        assert sample.crop_box.dtype == torch.int64 and sample.frame_size.tolist() == [[40, 56]]
        target, second = sample.object_ids[0].tolist()
        assert target in (1, 2) and second in (1, 2, -1) and target != second
        # the sample's classes, mapped to ids and warped back, sit on the frame's own labels
        box = tuple(sample.crop_box[0].tolist())
        for t, frame in enumerate(sample.frames[0].tolist()):
            ids = np.array([0, target, max(second, 0)], dtype=np.uint8)[sample.cls_gt[0, t].numpy()]
            back = labels_to_frame(ids, sample.geometry[0, t].numpy(), box, (40, 56))
            truth, _ = read_mask(video.mask_paths[frame])
            valid = back != NO_LABEL
            ours = np.where(np.isin(truth, [target, second]), truth, 0)
            assert (back[valid] == ours[valid]).mean() > 0.9
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_clips)))
    assert batch.geometry is not None and batch.object_ids is not None
    assert batch.geometry.shape == (2, 3, 3, 3) and batch.object_ids.shape == (2, 2)


# ---------------------------------------------------------------- merge and write


def test_merge_rules() -> None:
    bank = np.array([[0, 1, 2, 3, 1, 2]], dtype=np.uint8)
    classes = np.array([[1, 0, 0, 0, NO_LABEL, 2]], dtype=np.uint8)
    assert merge_classes(bank, classes, [1, 2]).tolist() == [[1, 0, 0, 3, 1, 2]]
    # without a second object, class 2 writes nothing and class 0 clears the target only
    assert merge_classes(bank, classes, [1, -1]).tolist() == [[1, 0, 2, 3, 1, 2]]
    assert merge_classes(bank, classes, [2, 1]).tolist() == [[2, 0, 0, 3, 1, 1]]
    # three objects: class 3 writes the third id, class 0 clears all three
    three = np.array([[3, 0, 0, 0, NO_LABEL, 2]], dtype=np.uint8)
    assert merge_classes(bank, three, [1, 2, 3]).tolist() == [[3, 0, 0, 0, 1, 2]]
    assert merge_classes(bank, three, [1, 2, -1]).tolist() == [[0, 0, 0, 3, 1, 2]]


FRAMES, HEIGHT, WIDTH = 6, 20, 20


def bank_masks() -> np.ndarray:
    """[T, H, W]: object 1 left block, object 2 right block, object 3 bottom strip."""
    masks = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=np.uint8)
    masks[:, 2:10, 2:8] = 1
    masks[:, 2:10, 12:18] = 2
    masks[:, 15:19, 2:18] = 3
    return masks


def fake_video(name: str = "a") -> VideoSequence:
    names = [f"{i:05d}" for i in range(FRAMES)]
    return VideoSequence(name=name, frame_paths=[Path(f"{n}.jpg") for n in names], frame_names=names)


def confident_probs(regions: list[dict[int, tuple[slice, slice]]]) -> torch.Tensor:
    """[1, T-1, 3, H, W] probabilities: uncertain everywhere, certain of class c in regions[t][c]
    (later regions overwrite earlier ones)."""
    probs = torch.full((1, len(regions), 3, HEIGHT, WIDTH), 1 / 3)
    for t, frame_regions in enumerate(regions):
        for cls, (rows, cols) in frame_regions.items():
            probs[0, t, :, rows, cols] = 0.0
            probs[0, t, cls, rows, cols] = 1.0
    return probs


def fake_batch(
    frames: list[int], matrix: np.ndarray, object_ids: list[int], geometry: bool = True
) -> ClipBatch:
    """One clip of video "a" (its video frames ``frames``) with all-background targets; with
    ``geometry`` (as VOSClipDataset gives) the fields write-back needs: ``matrix`` per frame."""
    steps, slots = len(frames), len(object_ids)
    where = {
        "geometry": torch.from_numpy(np.stack([matrix] * steps))[None],
        "crop_box": torch.tensor([[0, 0, HEIGHT, WIDTH]]),
        "frame_size": torch.tensor([[HEIGHT, WIDTH]]),
        "object_ids": torch.tensor([object_ids]),
    }
    return ClipBatch(
        rgb=torch.zeros(1, steps, 3, HEIGHT, WIDTH),
        first_masks=torch.zeros(1, slots, HEIGHT, WIDTH),
        cls_gt=torch.zeros(1, steps, HEIGHT, WIDTH, dtype=torch.int64),
        selector=(torch.tensor([object_ids]) >= 0).float(),
        labeled=torch.ones(1, steps, dtype=torch.bool),
        names=("a",),
        frames=torch.tensor([frames]),
        **(where if geometry else {}),
    )


def test_write_back_changes_exactly_the_expected_pixels(tmp_path: Path) -> None:
    video = fake_video()
    masks = bank_masks()
    palette = bytes(reversed(DAVIS_PALETTE))  # a non-default palette must survive
    bank = make_bank(tmp_path, [video], {"a": [0, 3]}, {"a": masks}, palette)
    before = {p.name: p.read_bytes() for p in (bank / "a").glob("*.png")}
    regime = Phase2Regime(
        TwoShotConfig(phase2_start_update=0, refine_threshold=0.99, write_back=True),
        bank=bank,
        videos=[video],
    )

    # Clip frames 1, 2 <- video frames 2 and 3 (3 is labeled: must stay as it is).
    # Identity geometry: a 20x20 crop of the whole 20x20 frame.
    identity = crop_resize_matrix((0, 0, HEIGHT, WIDTH), HEIGHT)
    np.testing.assert_allclose(identity, np.eye(3))
    everything = {0: (slice(0, 20), slice(0, 20))}
    regions = {
        0: (slice(5, 20), slice(0, 20)),  # "neither" over all three objects ...
        1: (slice(0, 2), slice(0, 5)),  # target on background
        2: (slice(12, 14), slice(0, 20)),
    }  # ... but the second object on rows 12-13
    batch = fake_batch([1, 2, 3], identity, [1, 2])
    probs = confident_probs([regions, everything])
    prepared = regime.prepare_targets(batch, ClipOutput(probs.log(), probs), it=0)
    assert prepared.cls_gt[0, 1, 0, 0] == 1  # the loss targets are refined as before

    expected = masks[2].copy()
    expected[0:2, 0:5] = 1
    expected[12:14, :] = 2
    ours = np.isin(masks[2], [1, 2])
    expected[5:20][ours[5:20]] = 0  # object 3 (rows 15-18) stays
    expected[12:14, :] = 2
    labels, saved_palette = read_mask(bank / "a" / "00002.png")
    assert np.array_equal(labels, expected)
    assert saved_palette[:768] == palette
    after = {p.name: p.read_bytes() for p in (bank / "a").glob("*.png")}
    assert {name for name in after if after[name] != before[name]} == {"00002.png"}
    assert not temp_files(bank)

    scalars = regime.log_scalars()
    assert scalars["written_back_pixels"] == int((expected != masks[2]).sum())
    assert scalars["written_back_files"] == 1
    assert 0 < scalars["written_back_share"] < 1
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["write_back"]["files_rewritten"] == 1
    assert manifest["write_back"]["pixels_changed"] == scalars["written_back_pixels"]

    # A mirrored crop of frame 4 with no second object: class 2 is dropped, class 1 lands
    # mirrored, class 0 clears only the target.
    mirror = np.array([[-1.0, 0.0, WIDTH - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch = fake_batch([0, 4, 4], mirror, [1, -1])
    regions = {
        1: (slice(0, 1), slice(0, 3)),
        2: (slice(19, 20), slice(0, 20)),
        0: (slice(2, 10), slice(0, 20)),
    }
    probs = confident_probs([regions, {}])
    regime.prepare_targets(batch, ClipOutput(probs.log(), probs), it=5)
    expected = masks[4].copy()
    expected[0:1, 17:20] = 1
    expected[2:10][masks[4][2:10] == 1] = 0
    assert np.array_equal(read_mask(bank / "a" / "00004.png")[0], expected)
    regime.log_scalars()
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["write_back"]["files_rewritten"] == 2
    # Re-finishing the bank (a rerun of pseudo-labelling) keeps the write-back record.
    identity_info = BankIdentity(manifest["checkpoint"], manifest["budget"], manifest["inference"])
    assert BankStore(bank, identity_info).finish(["a"])["write_back"]["files_rewritten"] == 2
    assert (bank / "a" / ".write_back.lock").is_file() and not temp_files(bank)


def test_write_back_needs_the_bank_and_its_manifest(tmp_path: Path) -> None:
    settings = TwoShotConfig(write_back=True)
    with pytest.raises(UserError, match="bank folder"):
        Phase2Regime(settings)
    with pytest.raises(UserError, match="manifest"):
        Phase2Regime(settings, bank=tmp_path, videos=[fake_video()])
    bank = make_bank(tmp_path, [fake_video()], {"a": [0]}, {"a": bank_masks()})
    with pytest.raises(UserError, match="not recorded"):
        Phase2Regime(settings, bank=bank, videos=[fake_video("b")])
    regime = Phase2Regime(
        TwoShotConfig(write_back=True, phase2_start_update=0), bank=bank, videos=[fake_video()]
    )
    probs = confident_probs([{}, {}])
    toy = fake_batch([0, 1, 2], np.eye(3), [1, 2], geometry=False)
    with pytest.raises(UserError, match="lack geometry, crop_box, frame_size, object_ids.*VOSClipDataset"):
        regime.prepare_targets(toy, ClipOutput(probs.log(), probs), it=0)


# ---------------------------------------------------------------- locking

ROWS_PER_WRITER = 20


def _write_rows(path: str, first_row: int, object_id: int, start: Any) -> None:
    """One writer: sets its rows of the frame to ``object_id`` one row per locked rewrite."""
    start.wait()  # both writers begin together (the imports take seconds)
    for row in range(first_row, first_row + ROWS_PER_WRITER):
        classes = np.full((2 * ROWS_PER_WRITER, 32), NO_LABEL, dtype=np.uint8)
        classes[row] = 1
        with video_lock(Path(path).parent):
            rewrite_frame(path, classes, [object_id, -1])


def test_two_processes_writing_one_frame_keep_both_updates(tmp_path: Path) -> None:
    folder = tmp_path / "bank" / "v"
    folder.mkdir(parents=True)
    path = folder / "00000.png"
    write_mask(path, np.zeros((2 * ROWS_PER_WRITER, 32), dtype=np.uint8))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [
        context.Process(target=_write_rows, args=(str(path), 0, 1, start)),
        context.Process(target=_write_rows, args=(str(path), ROWS_PER_WRITER, 2, start)),
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    labels, _ = read_mask(path)
    assert (labels[:ROWS_PER_WRITER] == 1).all() and (labels[ROWS_PER_WRITER:] == 2).all()
    assert not temp_files(folder)


# ---------------------------------------------------------------- training runs


@pytest.fixture
def bank_run(tmp_path: Path) -> tuple[list[VideoSequence], Path]:
    """Two 8-frame generated videos and a bank of their (ground-truth) masks, frames 1 and 5
    labeled."""
    data = tmp_path / "data"
    videos = [make_video(data, name, num_frames=8) for name in ("a", "b")]
    masks = {v.name: np.stack([read_mask(v.mask_paths[i])[0] for i in range(8)]) for v in videos}
    bank = make_bank(tmp_path, videos, {"a": [1, 5], "b": [1, 5]}, masks)
    return bank_sequences(videos, bank), bank


def _train_phase2(videos: list[VideoSequence], bank: Path, out: Path, write_back: bool) -> None:
    config = toy_config(
        "main.iterations=3",
        "main.lr_steps=[]",
        "main.save_every=3",
        "main.log_every=1",
        "twoshot.phase2_start_update=0",
        "twoshot.refine_threshold=0.34",
        f"twoshot.write_back={str(write_back).lower()}",
    )
    dataset = VOSClipDataset(videos, 32, sampling="bank", seed=1, repeats=2)
    regime = Phase2Regime(config.twoshot, bank=bank, videos=videos)
    train(config, "main", dataset, out, regime=regime, device="cpu", progress=False)


def test_without_write_back_the_bank_is_left_alone(bank_run, tmp_path: Path) -> None:
    videos, bank = bank_run
    before = folder_hash(bank)
    _train_phase2(videos, bank, tmp_path / "run", write_back=False)
    assert folder_hash(bank) == before
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "mode/refined_share" in log[-1] and "mode/written_back_pixels" not in log[-1]


def test_training_with_write_back_refines_unlabeled_frames_only(bank_run, tmp_path: Path) -> None:
    videos, bank = bank_run
    labeled = {bank / v.name / f"{v.frame_names[i]}.png" for v in videos for i in (1, 5)}
    labeled_bytes = {path: path.read_bytes() for path in labeled}
    before = {p: p.read_bytes() for p in bank.rglob("*.png")}
    _train_phase2(videos, bank, tmp_path / "run", write_back=True)
    changed = [p for p, data in before.items() if p.read_bytes() != data]
    assert changed, "a threshold of 0.34 makes nearly every pixel confident"
    for path, data in labeled_bytes.items():
        assert path.read_bytes() == data
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["write_back"]["files_rewritten"] >= len(changed)
    assert not temp_files(bank)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(r["mode/written_back_pixels"] for r in log) > 0


def test_pipeline_hands_the_bank_to_phase2(bank_run, tmp_path: Path, monkeypatch) -> None:
    videos, bank = bank_run
    config = toy_config("twoshot.write_back=true")
    config.pipeline.data = str(tmp_path / "data")
    config.pipeline.out = str(tmp_path / "run")
    pipeline = Pipeline(config, log=lambda _: None, progress=False)
    monkeypatch.setattr(Pipeline, "train_sequences", property(lambda self: videos))
    made = {}

    def fake_train_step(self, name, stage, make, init, folder=None):
        made["dataset"], made["mode"] = make()
        return tmp_path / "final.pth"

    monkeypatch.setattr(Pipeline, "_train_step", fake_train_step)
    pipeline.phase2(bank, None)
    writer = made["mode"].writer
    assert writer is not None and writer.bank == bank and set(writer.labeled) == {"a", "b"}
    assert writer.labeled["a"] == {1, 5}
