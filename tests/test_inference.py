"""Propagation engine: identical masks to straightforward re-implementations of STCN's
inference loops, one key encoding per frame, batched values, bounded memory, the Predictor."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from helpers import _onehot, _prepare, _to_labels, batch_invariant_convolutions, reference_davis
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.errors import UserError
from twoshot.inference import Predictor, PropagationEngine
from twoshot.inference.schedule import PERMANENT, TEMPORARY, plan_steps
from twoshot.model import STCN, build_model, save_weights
from twoshot.model.aggregate import aggregate
from twoshot.model.stcn.memory import memory_affinity, readout
from twoshot.model.stcn.memory_store import MemoryStore


@pytest.fixture(scope="module")
def model() -> STCN:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


# ---------------------------------------------------------------------------------------------
# Straightforward re-implementations of STCN's inference (hkchengrex/STCN): the frames are
# prepared the way its test datasets do (ToTensor -> contiguous CHW, normalise, resize), every
# frame is key-encoded on its own when reached.


def reference_youtube(
    model: STCN,
    frames: np.ndarray,
    given: Mapping[int, np.ndarray],
    *,
    mem_every: int = 5,
    top_k: int = 20,
    include_last: bool = False,
) -> np.ndarray:
    """STCN's inference_core_yv: one memory bank per object, objects enabled on the frame
    where they first appear, each pass running to the next annotated frame."""
    all_ids = sorted({int(o) for m in given.values() for o in np.unique(m) if o})
    num_objects = len(all_ids)
    with torch.inference_mode():
        images, pad = _prepare(frames, -1)
        num = len(frames)
        prob = torch.zeros(num_objects + 1, num, *images.shape[-2:])
        prob[0] = 1e-7
        banks: dict[int, list[torch.Tensor | None]] = {}  # object -> [mem_k, mem_v, temp_k, temp_v]

        def add(obj: int, key: torch.Tensor, value: torch.Tensor, temp: bool) -> None:
            bank = banks.get(obj)
            if bank is None:
                banks[obj] = [key, value, None, None]
                return
            bank[2] = bank[3] = None
            if temp:
                bank[2], bank[3] = key, value
            else:
                bank[0] = torch.cat([bank[0], key], 2)
                bank[1] = torch.cat([bank[1], value], 2)

        def read(obj: int, qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mk, mv, tk, tv = banks[obj]
            if tk is not None:
                mk, mv = torch.cat([mk, tk], 2), torch.cat([mv, tv], 2)
            return mk, mv[:, None]

        enabled: list[int] = []  # channel numbers 1..K in enabling order
        annotated = sorted(given)
        for i, frame in enumerate(annotated):
            end_idx = annotated[i + 1] + 1 if i + 1 < len(annotated) else num
            onehot = _onehot(given[frame], all_ids, frames.shape[1:3])
            new = [all_ids.index(int(o)) + 1 for o in np.unique(given[frame]) if o]
            enabled.extend(new)
            prob[:, frame, onehot.sum(0) > 0.5] = 0
            for c in new:
                prob[c, frame] = onehot[c - 1]
            prob[:, frame] = aggregate(prob[None, 1:, frame], dim=1)[0]
            feats = model.encode_key(images[frame : frame + 1])
            values = model.encode_value(images[frame : frame + 1], feats.f16, prob[None, enabled, frame])
            for j, c in enumerate(enabled):
                add(c, feats.key.flatten(2), values[:, j].flatten(2), False)
            last = frame
            end = end_idx - 1
            for t in range(frame + 1, end_idx):
                is_mem = abs(t - last) >= mem_every
                feats = model.encode_key(images[t : t + 1])
                # segment_with_query: each object reads its own bank and is decoded alone.
                h, w = feats.key.shape[-2:]
                outs = []
                for c in enabled:
                    mk, mv = read(c, feats.key)
                    ro = readout(memory_affinity(mk, feats.key.flatten(2), top_k), mv)
                    outs.append(torch.sigmoid(model.decode(ro.view(1, 1, -1, h, w), feats)))
                out = aggregate(torch.cat(outs, 1), dim=1)
                prob[0, t] = out[0, 0]
                for j, c in enumerate(enabled):
                    prob[c, t] = out[0, j + 1]
                if t != end and (include_last or is_mem):
                    values = model.encode_value(images[t : t + 1], feats.f16, out[:, 1:])
                    for j, c in enumerate(enabled):
                        add(c, feats.key.flatten(2), values[:, j].flatten(2), not is_mem)
                    if is_mem:
                        last = t
        result = np.stack([_to_labels(prob[:, t], pad, frames.shape[1:3], all_ids) for t in range(num)])
        result[: annotated[0]] = 0
        return result


def _engine(model: STCN, **settings: object) -> PropagationEngine:
    """An engine on the exact path (the equality tests' subject) unless ``exact=False``."""
    config = InferenceConfig(**{"size": -1, "device": "cpu", "exact": True, **settings})  # type: ignore[arg-type]
    return PropagationEngine(model, config)


# ---------------------------------------------------------------------------------------------
# Identical masks


@pytest.mark.parametrize("mem_every,include_last", [(5, False), (2, True), (3, False)])
def test_forward_equals_stcn_inference_core(model: STCN, mem_every: int, include_last: bool) -> None:
    frames, labels = random_video(12, (50, 70), object_ids=(1, 3), seed=1)
    expected = reference_davis(model, frames, labels[0], mem_every=mem_every, include_last=include_last)
    engine = _engine(model, mem_every=mem_every, include_last=include_last, key_batch=1)
    result = engine.propagate(frames, {0: labels[0]})
    assert len(np.unique(expected[1:])) >= 2  # not a trivial output (random weights)
    np.testing.assert_array_equal(result.masks, expected)
    with batch_invariant_convolutions():
        expected = reference_davis(model, frames, labels[0], mem_every=mem_every, include_last=include_last)
        batched = _engine(model, mem_every=mem_every, include_last=include_last, key_batch=5)
        np.testing.assert_array_equal(batched.propagate(frames, {0: labels[0]}).masks, expected)


def test_exact_engine_equals_stcn_on_cpu(model: STCN) -> None:
    """With no key_batch set, a CPU engine encodes one frame per call, so its exact masks are
    STCN's bit for bit; an explicit key_batch is kept."""
    frames, labels = random_video(12, (50, 70), object_ids=(1, 3), seed=1)
    engine = _engine(model)
    assert engine.key_batch == 1 and _engine(model, key_batch=6).key_batch == 6
    expected = reference_davis(model, frames, labels[0], mem_every=5, include_last=False)
    np.testing.assert_array_equal(engine.propagate(frames, {0: labels[0]}).masks, expected)


def test_default_engine_is_fast_and_agrees_with_stcn(model: STCN) -> None:
    """The default (not exact) engine runs channels-last on the fast copy (no BatchNorm left)
    and leaves the caller's model as it was; its masks agree with STCN's on >= 99.9% of pixels."""
    frames, labels = random_video(12, (50, 70), object_ids=(1, 3), seed=1)
    engine = PropagationEngine(model, InferenceConfig(size=-1, device="cpu"))
    assert engine.memory_format == torch.channels_last
    propagator_model = engine.propagator._encode_key.__self__  # type: ignore[attr-defined]
    assert propagator_model is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in propagator_model.key_encoder.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.key_encoder.modules())
    expected = reference_davis(model, frames, labels[0], mem_every=5, include_last=False)
    masks = engine.propagate(frames, {0: labels[0]}).masks
    assert (masks == expected).mean() >= 0.999


def test_resized_processing_equals_reference(model: STCN) -> None:
    frames, labels = random_video(8, (60, 84), object_ids=(2,), seed=2)
    expected = reference_davis(model, frames, labels[0], size=40)
    result = _engine(model, size=40, key_batch=1).propagate(frames, {0: labels[0]})
    assert result.masks.shape == (8, 60, 84)
    np.testing.assert_array_equal(result.masks, expected)


def test_objects_appearing_later_equal_stcn_youtube_core(model: STCN) -> None:
    frames, labels = random_video(12, (48, 64), object_ids=(2, 5, 7), first_frames={5: 3, 7: 7}, seed=3)
    given = {
        0: np.where(labels[0] == 2, 2, 0).astype(np.uint8),
        3: np.where(labels[3] == 5, 5, 0).astype(np.uint8),
        7: np.where(labels[7] == 7, 7, 0).astype(np.uint8),
    }
    with batch_invariant_convolutions():
        expected = reference_youtube(model, frames, given, mem_every=2, include_last=True)
        result = _engine(model, mem_every=2, include_last=True).propagate(frames, given)
    assert {5, 7} <= set(np.unique(expected[8:]).tolist())  # late objects are propagated
    np.testing.assert_array_equal(result.masks, expected)
    assert (
        result.sources[:3] == [0, 0, 0] and result.sources[3:7] == [3] * 4 and result.sources[7:] == [7] * 5
    )


def test_first_annotation_mid_video_leaves_earlier_frames_empty(model: STCN) -> None:
    frames, labels = random_video(8, (48, 64), object_ids=(4,), seed=4)
    with batch_invariant_convolutions():
        expected = reference_youtube(model, frames, {3: labels[3]})
        result = _engine(model).propagate(frames, {3: labels[3]})
    np.testing.assert_array_equal(result.masks, expected)
    assert not result.masks[:3].any() and result.sources[:3] == [None] * 3


def test_skipped_frames_do_not_change_the_others(model: STCN) -> None:
    frames, labels = random_video(14, (48, 64), seed=5)
    engine = _engine(model, mem_every=3)
    full = engine.propagate(frames, {0: labels[0]})
    wanted = [0, 5, 10, 13]
    part = engine.propagate(frames, {0: labels[0]}, output_frames=wanted)
    np.testing.assert_array_equal(part.masks[wanted], full.masks[wanted])
    assert part.stats.key_encodes < full.stats.key_encodes  # frames 1, 2, 4 ... never encoded


# ---------------------------------------------------------------------------------------------
# Work done


def test_each_frame_encoded_once_and_values_batched_over_objects(
    model: STCN, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames, labels = random_video(11, (48, 64), object_ids=(1, 2, 3), seed=6)
    calls: list[int] = []
    original = model.encode_value

    def counting(images: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        calls.append(masks.shape[1])
        return original(images, f16, masks)

    monkeypatch.setattr(model, "encode_value", counting)
    engine = _engine(model, mem_every=5, key_batch=4)
    forward = engine.propagate(frames, {0: labels[0]})
    assert forward.stats.key_encodes == 11 and forward.stats.encoder_calls == 3
    assert calls == [3, 3]  # frames 0 and 5 (10 is last), all objects in one call
    calls.clear()
    both = engine.propagate(frames, {2: labels[2], 8: labels[8]}, direction="bidirectional")
    # four runs share one encoding of each frame; the labeled frames are kept as given
    assert both.stats.runs == 4 and both.stats.key_encodes == 11
    np.testing.assert_array_equal(both.masks[[2, 8]], labels[[2, 8]])
    assert both.sources == [2, 2, 2, 2, 2, 8, 8, 8, 8, 8, 8]
    assert all(n == 3 for n in calls)


def test_memory_stays_within_cap_on_a_long_video(model: STCN) -> None:
    frames, labels = random_video(40, (32, 32), object_ids=(1,), seed=7)
    capped = _engine(model, mem_every=1, max_memory_frames=3).propagate(frames, {0: labels[0]})
    assert capped.stats.peak_memory_frames == 3
    free = _engine(model, mem_every=1).propagate(frames, {0: labels[0]})
    assert free.stats.peak_memory_frames == 39


def test_memory_store_keeps_labeled_frames_and_drops_the_oldest_others() -> None:
    bank = MemoryStore(max_frames=3)
    bank.add_objects(1)
    key, value = torch.zeros(2, 1, 1), torch.zeros(1, 4, 1, 1)
    bank.add(key, value, pinned=True)
    for _ in range(5):
        bank.add(key, value)
        assert bank.num_frames <= 3
    assert [e.serial for e in bank.entries] == [0, 4, 5] and bank.entries[0].pinned
    bank.add(key, value, temporary=True)
    assert bank.num_frames == 3 and bank.temporary is not None


def test_plan_follows_stcn_memory_rules() -> None:
    steps = plan_steps(list(range(8)), {0}, set(range(8)), mem_every=3, include_last=False)
    assert [s.memory for s in steps] == [PERMANENT, None, None, PERMANENT, None, None, PERMANENT, None]
    steps = plan_steps(list(range(4)), {0}, set(range(4)), mem_every=5, include_last=True)
    assert [s.memory for s in steps] == [PERMANENT, TEMPORARY, TEMPORARY, None]
    # not needed and not memory: skipped; nothing after the last output
    steps = plan_steps(list(range(10)), {0}, {7}, mem_every=3, include_last=False)
    assert [s.frame for s in steps] == [0, 3, 6, 7]
    # an annotated frame restarts the memory count
    steps = plan_steps(list(range(8)), {0, 2}, set(range(8)), mem_every=3, include_last=False)
    assert [s.frame for s in steps if s.memory] == [0, 2, 5]


# ---------------------------------------------------------------------------------------------
# Inputs and the Predictor


def test_bad_inputs_raise_user_errors(model: STCN) -> None:
    frames, labels = random_video(4, (48, 64), seed=8)
    engine = _engine(model)
    with pytest.raises(UserError, match="is 32x24 but the frame is 64x48"):
        engine.propagate(frames, {0: labels[0][:24, :32]})
    with pytest.raises(UserError, match="RGB"):
        engine.propagate(frames, {0: np.zeros((48, 64, 3), np.uint8)})
    with pytest.raises(UserError, match="4 frames"):
        engine.propagate(frames, {9: labels[0]})
    with pytest.raises(UserError, match="no object"):
        engine.propagate(frames, {0: np.zeros((48, 64), np.uint8)})
    with pytest.raises(UserError, match="empty video"):
        engine.propagate(frames[:0], {0: labels[0]})


def test_predictor_from_checkpoint(model: STCN, tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "tiny.pth"  # type: ignore[operator]
    save_weights(model, path)
    predictor = Predictor.from_checkpoint(path, device="cpu")  # preset found from the weights
    assert predictor.config.size == -1 and predictor.device.type == "cpu"
    frames, labels = random_video(6, (48, 64), object_ids=(3, 6), seed=9)
    masks = predictor.propagate(frames, {0: labels[0]})
    assert masks.shape == (6, 48, 64) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, _engine(model).propagate(frames, {0: labels[0]}).masks)
    prob, ids = predictor.probabilities(frames, {0: labels[0]})
    assert ids == [3, 6] and prob.shape == (6, 3, 48, 64)
    np.testing.assert_allclose(prob.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(np.array([0, 3, 6])[prob.argmax(1)], masks)
    small = Predictor.from_checkpoint(path, preset="tiny", config=InferenceConfig(size=32), device="cpu")
    assert small.propagate(frames, {0: labels[0]}).shape == (6, 48, 64)


def test_import_twoshot_is_light_and_exports_predictor() -> None:
    import subprocess

    code = (
        "import sys, twoshot; assert 'torch' not in sys.modules; "
        "from twoshot import Predictor; assert 'torch' in sys.modules; print(Predictor.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Predictor"
