"""SAM 2 tracking through the engine: hole filling against an independent labelling, the
combination of objects, backward runs equal forward runs on the reversed video, objects
entering later, bounded memory, bfloat16 memories, and the pseudo-label bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.measure import label as skimage_label

from twoshot.config import InferenceConfig
from twoshot.data.fixtures import make_davis, random_video
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_frames, open_dataset
from twoshot.inference import PropagationEngine
from twoshot.inference.pseudo_label import build_bank
from twoshot.model.sam2 import Sam2, Sam2Propagator, connected_components, fill_holes, probabilities
from twoshot.model.sam2.propagator import Sam2RunMemory

CONFIG = InferenceConfig(size=-1, exact=True, device="cpu")


@pytest.fixture(scope="module")
def model() -> Sam2:
    torch.manual_seed(0)
    sam = Sam2("toy").eval()
    with torch.no_grad():  # random weights see every object: the masks are not all empty
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    return sam


def engine(model: Sam2, config: InferenceConfig = CONFIG) -> PropagationEngine:
    return PropagationEngine(model, config, "cpu")


# ---------------------------------------------------------------------------------------------
# Post-processing and the combination of objects


def test_connected_components_match_an_independent_labelling() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 1, 20, 24)) > 0.6
    labels, areas = connected_components(torch.from_numpy(masks))
    for i in range(3):
        expected = skimage_label(masks[i, 0], connectivity=2)
        # same partition (label numbers may differ) and each pixel's component size
        ours = labels[i, 0].numpy()
        pairs = {(int(a), int(b)) for a, b in zip(ours.ravel(), expected.ravel())}
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
        sizes = np.bincount(expected.ravel())
        sizes[0] = 0
        assert np.array_equal(areas[i, 0].numpy(), sizes[expected])


def test_fill_holes_fills_background_components_up_to_the_area() -> None:
    logits = torch.full((1, 1, 12, 12), 5.0)
    logits[0, 0, 2:4, 2:6] = -3.0  # a hole of 8 pixels: filled
    logits[0, 0, 7:10, 7:10] = -3.0  # a hole of 9 pixels: kept
    logits[0, 0, 0, 11] = -1.0  # a corner pixel touching the border: a hole too
    filled = fill_holes(logits, 8)
    expected = logits.clone()
    expected[0, 0, 2:4, 2:6] = 0.1
    expected[0, 0, 0, 11] = 0.1
    assert torch.equal(filled, expected)
    assert torch.equal(fill_holes(logits, 0), logits)
    # Diagonal neighbours are connected: two 5-pixel pieces touching at a corner make 10.
    diagonal = torch.full((1, 1, 8, 12), 5.0)
    diagonal[0, 0, 0, 0:5] = -1.0
    diagonal[0, 0, 1, 5:10] = -1.0
    assert torch.equal(fill_holes(diagonal, 8), diagonal)


def test_probabilities_keep_the_decision_of_logits_an_ulp_apart() -> None:
    close = torch.tensor(0.19131231307983398)
    logits = torch.stack([close - 1e-3, close, torch.nextafter(close, torch.tensor(1.0))])[:, None, None]
    tie = torch.tensor([0.5, 0.5])[:, None, None]
    for given, winner in ((logits, 3), (tie, 1), (torch.zeros(2, 1, 1), 0)):
        prob = probabilities(given)
        assert prob[:, 0, 0].argmax().item() == winner
        assert (prob[winner] > torch.cat([prob[:winner], prob[winner + 1 :]])).all()
        assert abs(prob.sum().item() - 1) < 1e-6


def test_probabilities_pick_background_unless_a_logit_is_positive_then_the_highest() -> None:
    logits = torch.tensor([[[-2.0, 3.0, 1.0, -0.5]], [[-1.0, 2.0, 4.0, -3.0]]])  # [K=2, 1, 4]
    prob = probabilities(logits)
    assert torch.allclose(prob.sum(0), torch.ones(1, 4))
    assert prob.argmax(0).tolist() == [[0, 1, 2, 0]]
    assert torch.allclose(
        prob[1, 0, 1] / prob[0, 0, 1], torch.sigmoid(torch.tensor(3.0)) / torch.sigmoid(torch.tensor(-3.0))
    )


# ---------------------------------------------------------------------------------------------
# Tracking through the engine


@pytest.fixture(scope="module")
def video() -> tuple[np.ndarray, np.ndarray]:
    return random_video(8, (128, 128), object_ids=(1, 2, 3), first_frames={3: 3}, seed=1)


def test_backward_run_equals_forward_run_on_the_reversed_video(
    model: Sam2, video: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, labels = video
    last = len(frames) - 1
    given = {last: labels[last]}
    backward = engine(model).propagate(frames, given, direction="bidirectional")
    forward = engine(model).propagate(frames[::-1].copy(), {0: labels[last]}, direction="forward")
    assert backward.sources == [last] * len(frames)
    assert np.array_equal(backward.masks, forward.masks[::-1])
    assert (backward.masks[: last - 1] > 0).mean() > 0.05  # something was tracked


def test_objects_entering_later_are_tracked_from_their_frame_only(
    model: Sam2, video: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, labels = video
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)
    entering = np.where(labels[3] == 3, 3, 0).astype(np.uint8)
    both = engine(model).propagate(frames, {0: first, 3: entering})
    assert np.array_equal(both.masks[0], first)
    assert not (both.masks[:3] == 3).any()
    assert np.array_equal(both.masks[3] == 3, entering == 3)
    assert (both.masks[4:] == 3).any()
    # Objects are tracked separately: object 3's track alone (from frame 3) gives the same
    # logits, so wherever neither run has another object, its pixels agree.
    alone = engine(model).propagate(frames[3:], {0: entering})
    others = engine(model).propagate(frames, {0: first})
    free = (others.masks[4:] == 0) & ~np.isin(both.masks[4:], (1, 2))
    assert np.array_equal((both.masks[4:] == 3) & free, (alone.masks[1:] == 3) & free)
    # and objects 1 and 2 are unaffected by object 3 wherever object 3 is absent
    away = both.masks[4:] != 3
    assert np.array_equal(np.where(away, both.masks[4:], 0), np.where(away, others.masks[4:], 0))


def test_memory_stays_bounded_on_a_long_video(model: Sam2) -> None:
    frames, labels = random_video(24, (128, 128), object_ids=(1,), seed=2)
    result = engine(model).propagate(frames, {0: labels[0]})
    # one conditioning frame + the 15 recent frames object pointers can still reach
    assert result.stats.peak_memory_frames == 16
    assert result.stats.segmented == 23


def test_bfloat16_mode_keeps_memories_in_bfloat16_and_runs_on_a_cpu(
    model: Sam2, video: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, labels = video
    config = InferenceConfig(size=-1, exact=True, device="cpu", amp=True, amp_dtype="bfloat16")
    eng = engine(model, config)
    assert isinstance(eng.propagator, Sam2Propagator)
    propagator = eng.propagator
    memory = propagator.new_memory()
    assert isinstance(memory, Sam2RunMemory)
    with torch.inference_mode():
        images = torch.rand(1, 3, 128, 128)
        features = propagator.encode_frames(images)
        # convolutions ran in bfloat16; the stride-16 map is float32 after the FPN's float32 sum
        assert features.high_res[0].dtype == torch.bfloat16 and features.features.dtype == torch.float32
        memory.add_objects(1)
        prob = torch.zeros(1, 2, 128, 128)
        prob[0, 1, 10:40, 10:40] = 1
        prob[0, 0] = 1 - prob[0, 1]
        propagator.memorize(memory, images, features, prob, None, pinned=True)
        stored = next(iter(memory.tracks[0].conditioning.values()))
        assert stored.features.dtype == torch.bfloat16
        out = propagator.segment(memory, images, features)
        assert out.dtype == torch.float32 and torch.allclose(out.sum(1), torch.ones(1, 128, 128))
    fp32 = engine(model).propagate(frames, {0: labels[0]}).masks
    bf16 = eng.propagate(frames, {0: labels[0]}).masks
    assert (fp32[1:] == bf16[1:]).mean() > 0.9


def test_bank_equals_forward_and_backward_runs(model: Sam2, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 8}, size=(64, 64), object_ids=(1, 2))
    sequences = open_dataset("davis", data.root, "train")
    a, b = 1, 6
    budget = {"bear": [f"{a:05d}.jpg", f"{b:05d}.jpg"]}
    config = InferenceConfig(size=-1, exact=True, device="cpu")
    # 64x64 frames are resized to the toy's 128x128 input inside the propagator
    build_bank(model, sequences, budget, tmp_path / "bank", config, progress=False)
    frames = load_frames(sequences[0])
    gt = {i: read_mask(sequences[0].mask_paths[i])[0] for i in (a, b)}
    eng = engine(model, config)
    # The bank's runs scale pointer distances by the whole video's length (8 frames, as the
    # reference's state does); the clips below would use their own.
    assert isinstance(eng.propagator, Sam2Propagator)
    eng.propagator.start_video = lambda num_frames: None  # type: ignore[method-assign]
    eng.propagator.num_frames = len(frames)
    fwd = {s: eng.propagate(frames[s:], {0: gt[s]}).masks for s in (a, b)}
    bwd = {s: eng.propagate(frames[s::-1].copy(), {0: gt[s]}).masks[::-1] for s in (a, b)}
    bank = np.stack(
        [read_mask(tmp_path / "bank" / "bear" / f"{name}.png")[0] for name in data.frame_names["bear"]]
    )
    # each frame from its nearest labeled frame: 0 from a backward, 2-3 a forward, 4-5 b backward, 7 b forward
    expected = np.stack([bwd[a][0], gt[a], fwd[a][1], fwd[a][2], bwd[b][4], bwd[b][5], gt[b], fwd[b][1]])
    assert np.array_equal(bank, expected)
    assert len(np.unique(bank[[0, 3, 4, 7]])) >= 2  # not a trivial output


def test_given_masks_are_told_from_predictions_on_annotated_frames() -> None:
    from twoshot.model.aggregate import aggregate
    from twoshot.model.sam2.propagator import _given

    objects = torch.zeros(2, 16, 16)
    objects[0, 2:6, 2:6] = 1  # a given mask (the engine's overlay: one-hot, then aggregated)
    objects[1] = torch.sigmoid(torch.linspace(-3, 3, 16)).expand(16, 16)  # a prediction
    prob = aggregate(objects[None], dim=1)[0]
    own = torch.zeros(16, 16, dtype=torch.bool)
    assert _given(prob[1], own)
    assert not _given(prob[1], prob[1] > 0.5)  # the same as the object's own prediction
    assert not _given(prob[2], prob[2] > 0.5)  # soft: a prediction
    assert not _given(torch.zeros(16, 16), own)  # no foreground


def test_a_later_annotation_conditions_only_the_objects_it_gives(
    model: Sam2, video: tuple[np.ndarray, np.ndarray]
) -> None:
    frames, labels = video
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)
    again = np.where(labels[4] == 1, 1, 0).astype(np.uint8)  # object 1 given again, object 2 not
    eng = engine(model)
    assert isinstance(eng.propagator, Sam2Propagator)
    runs: list[Sam2RunMemory] = []

    def recorded() -> Sam2RunMemory:
        runs.append(Sam2RunMemory())
        return runs[-1]

    eng.propagator.new_memory = recorded  # type: ignore[method-assign]
    result = eng.propagate(frames, {0: first, 4: again})
    assert np.array_equal(result.masks[4] == 1, again == 1)
    (memory,) = runs
    assert list(memory.tracks[0].conditioning) == [0, 4]
    assert list(memory.tracks[1].conditioning) == [0]
    assert 4 in memory.tracks[1].recent


def test_later_given_frames_are_read_from_the_start_of_the_run(
    model: Sam2, video: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames, labels = video
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)
    read: list[tuple[int, list[int]]] = []
    track = Sam2Propagator._track

    def spy(self: Sam2Propagator, memory: Sam2RunMemory, tracked: object, features: object) -> object:
        read.append((memory.frame, list(tracked.conditioning)))  # type: ignore[attr-defined]
        return track(self, memory, tracked, features)  # type: ignore[arg-type]

    monkeypatch.setattr(Sam2Propagator, "_track", spy)
    eng = engine(model)
    propagation = eng.frames(frames, {0: first, 5: first})  # forward
    list(propagation)
    # Both objects read given frames 0 and 5 on every tracked frame, before frame 5 too (as
    # the reference's add_new_mask on both, then propagate_in_video); frame 5 gives both
    # objects, so it is not tracked.
    assert [f for f, _ in read[::2]] == [1, 2, 3, 4, 6, 7]
    assert all(given == [0, 5] for _, given in read)
    assert propagation.stats.key_encodes == len(frames)  # frame 5 encoded once, read twice


def test_frames_are_resized_as_the_reference_loader_resizes_them(model: Sam2) -> None:
    from PIL import Image

    from twoshot.inference.geometry import Geometry, prepare_frames
    from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    frames, _ = random_video(2, (50, 70), seed=3)
    geometry = Geometry.for_frames(50, 70, -1, upscale=False, multiple=Sam2Propagator.preparation.pad_to)
    assert geometry.padding == (0, 0, 0, 0) and geometry.padded == (50, 70)
    images = prepare_frames(frames, geometry, torch.device("cpu"), normalize_first=False)
    resized = Sam2Propagator(model, CONFIG).model.image_size
    from twoshot.model.sam2.propagator import resize_as_reference

    ours = resize_as_reference(images, resized)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for frame, got in zip(frames, ours):
        pixels = np.asarray(Image.fromarray(frame).resize((resized, resized))) / 255.0
        expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() - mean) / std
        assert torch.equal(got, expected)
    # Masks come back at the frame's own size (no padding in between).
    out = engine(model).propagate(frames, {0: (frames[0, :, :, 0] > 128).astype(np.uint8)})
    assert out.masks.shape == (2, 50, 70)
