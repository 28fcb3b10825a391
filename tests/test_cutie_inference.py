"""Cutie's inference: the memory read against a per-pixel loop, buckets of objects enabled on
different frames, long-term consolidation, the propagator's contract and a recorded run.

The recorded values were taken after ``benchmarks/cutie_reference.py`` found twoshot's
propagator bit-identical to the reference implementation (docs/models.md); they guard the
outputs against silent changes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import load_benchmark
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine
from twoshot.model.aggregate import aggregate_logits
from twoshot.model.cutie import Cutie, CutieFeatures, CutiePropagator, MemorySettings, memory_settings
from twoshot.model.cutie.memory_read import readout, similarity, softmax_top_k
from twoshot.model.cutie.propagator import stagger_frames
from twoshot.model.cutie.store import KeyValueMemory, _LongTerm
from twoshot.model.interface import PERMANENT, TEMPORARY
from twoshot.model.preprocess import normalize_images, pad_divide_by

# Its fan-in-scaled weights (the same fill as the fast-path agreement benchmark's).
fast_agreement = load_benchmark("fast_agreement")


def tiny_model(seed: int = 0) -> Cutie:
    return fast_agreement.seeded_weights(Cutie(load_config("cutie-tiny").model), seed)


def overlay(prob: torch.Tensor | None, ids: list[int], mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Annotation over prediction, as the reference's InferenceCore.step. mask long [H, W]."""
    present = [int(o) for o in torch.unique(mask) if o != 0]
    new = [o for o in present if o not in ids]
    if prob is None:
        objects = torch.stack([(mask == o).float() for o in present])
    else:
        objects = prob[0, 1:].clone()
        objects[:, mask > 0] = 0
        for o in present:
            if o in ids:
                objects[ids.index(o)] = (mask == o).float()
        objects = torch.cat([objects, *[(mask == o).float()[None] for o in new]])
    return torch.softmax(aggregate_logits(objects, dim=0), dim=0)[None], new


def drive(
    propagator: CutiePropagator,
    images: torch.Tensor,
    masks: dict[int, torch.Tensor],
    mem_every: int,
    after_frame=None,
) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """The engine's loop over one forward run: segment, overlay, memorize (Cutie's memory
    frames: annotated, or mem_every frames since the last; never the last frame)."""
    memory = propagator.new_memory()
    ids: list[int] = []
    last = 0
    out = []
    for t in range(images.shape[0]):
        image = images[t : t + 1]
        features = propagator.encode_frames(image)
        prob = propagator.segment(memory, image, features) if ids else None
        if t in masks:
            prob, new = overlay(prob, ids, masks[t])
            if new:
                memory.add_objects(len(new))
                ids += new
        assert prob is not None
        is_memory = (t in masks or t - last >= mem_every) and t != images.shape[0] - 1
        propagator.memorize(
            memory, image, features, prob, PERMANENT if is_memory else None, pinned=t in masks
        )
        last = t if is_memory else last
        out.append(prob[0])
        if after_frame is not None:
            after_frame(memory)
    return out


def video(
    frames: int, size: tuple[int, int], enter: int, seed: int = 0
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Normalised padded frames [T, 3, H, W] and the annotations: objects 1 on frame 0, 2 on ``enter``."""
    rgb, labels = random_video(frames, size, object_ids=(1, 2), first_frames={2: enter}, seed=seed)
    images = pad_divide_by(normalize_images(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()), 16)[0]
    masks = {
        0: torch.from_numpy(labels[0]).long(),
        enter: torch.from_numpy(np.where(labels[enter] == 2, 2, 0)).long(),
    }
    return images, {t: pad_divide_by(m, 16)[0] for t, m in masks.items()}


def test_memory_read_matches_a_per_pixel_loop() -> None:
    g = torch.Generator().manual_seed(0)
    key_dim, entries, queries, top_k = 4, 13, 6, 5
    mk = torch.randn(1, key_dim, entries, generator=g)
    ms = 1 + 2 * torch.rand(1, 1, entries, generator=g)
    qk = torch.randn(1, key_dim, queries, generator=g)
    qe = torch.rand(1, key_dim, queries, generator=g)
    values = torch.randn(1, 2, 3, entries, generator=g)

    sim = similarity(mk, ms, qk, qe)
    affinity, usage = softmax_top_k(sim, top_k)
    out = readout(affinity, values)
    assert sim.shape == affinity.shape == (1, entries, queries) and out.shape == (1, 2, 3, queries)
    for q in range(queries):
        scores = []
        for n in range(entries):
            distance = sum(
                float(qe[0, c, q]) * (float(mk[0, c, n]) - float(qk[0, c, q])) ** 2 for c in range(key_dim)
            )
            scores.append(-distance * float(ms[0, 0, n]) / math.sqrt(key_dim))
        assert sim[0, :, q].tolist() == pytest.approx(scores, rel=1e-4, abs=1e-4)
        best = sorted(range(entries), key=lambda n: -scores[n])[:top_k]
        top = max(scores[n] for n in best)
        weights = {n: math.exp(scores[n] - top) for n in best}
        total = sum(weights.values())
        for n in range(entries):
            assert float(affinity[0, n, q]) == pytest.approx(weights.get(n, 0.0) / total, abs=1e-6)
        for k in range(2):
            for c in range(3):
                expected = sum(weights[n] / total * float(values[0, k, c, n]) for n in best)
                assert float(out[0, k, c, q]) == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(usage, affinity.sum(2))
    assert torch.allclose(affinity.sum(1), torch.ones(1, queries))


def test_top_k_softmax_survives_far_keys_and_caps_k() -> None:
    sim = torch.tensor([[[-300.0, -1e4], [-301.0, -1e4 - 1], [-900.0, -1e4 - 2]]])  # all exp() underflow
    affinity, _ = softmax_top_k(sim, 2)
    expected = torch.tensor([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0])
    assert torch.allclose(affinity[0, :, 0], expected) and torch.allclose(affinity[0, :, 1], expected)
    capped, _ = softmax_top_k(torch.tensor([[[-1.0], [-2.0]]]), 30)  # k above the entries: all of them
    assert torch.allclose(capped[0, :, 0], torch.softmax(torch.tensor([-1.0, -2.0]), 0))


def _frame(
    value: float, objects: int, key_dim: int = 2, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1x2 memory frame whose key, shrinkage, selection and values are all ``value``
    (object k's values value + 100 k)."""
    key = torch.full((1, key_dim, 1, 2), value)
    values = torch.stack([torch.full((channels, 1, 2), value + 100 * k) for k in range(objects)])[None]
    return key, torch.ones(1, 1, 1, 2), torch.ones(1, key_dim, 1, 2), values


def test_buckets_of_objects_enabled_on_different_frames_read_their_own_memory() -> None:
    memory = KeyValueMemory(MemorySettings(max_mem_frames=3, top_k=100))
    memory.new_bucket(0, 2)
    for frame in range(5):
        if frame == 2:
            memory.new_bucket(2, 3)
        memory.add(*_frame(float(frame), 2 if frame < 2 else 3))
    first, second = memory.buckets
    assert (first.first, first.stop, second.first, second.stop) == (0, 2, 2, 3)
    # Each keeps its own first memory frame (permanent) and the 2 most recent ones (FIFO).
    assert first.keys[0, 0, ::2].tolist() == [0.0, 3.0, 4.0] and first.permanent == 2
    assert second.keys[0, 0, ::2].tolist() == [2.0, 3.0, 4.0] and second.permanent == 2
    assert first.values.shape == (1, 2, 3, 6) and second.values.shape == (1, 1, 3, 6)
    assert second.values[0, 0, 0, ::2].tolist() == [202.0, 203.0, 204.0]  # object 2's own values
    assert memory.working_frames == 3 and memory.peak_frames == 3

    query = torch.full((1, 2, 1, 2), 2.4)
    selection = torch.ones(1, 2, 1, 2)
    out = memory.read(query, selection)
    assert [tuple(o.shape) for o in out] == [(1, 2, 3, 1, 2), (1, 1, 3, 1, 2)]
    for bucket, got in zip(memory.buckets, out):
        frames = bucket.keys[0, 0, ::2]
        weights = torch.softmax(-2 * (frames - 2.4) ** 2 / math.sqrt(2), 0) / 2  # two entries per frame
        for k in range(bucket.stop - bucket.first):
            expected = (2 * weights * (frames + 100 * (bucket.first + k))).sum()
            assert torch.allclose(got[0, k], expected.expand(3, 1, 2))


def test_long_term_consolidation_pools_the_most_used_entries() -> None:
    settings = MemorySettings(
        max_mem_frames=3,
        long_term=True,
        min_mem_frames=2,
        num_prototypes=1,
        max_num_tokens=4,
        buffer_tokens=1,
        top_k=100,
    )
    memory = KeyValueMemory(settings)
    memory.new_bucket(0, 1)
    bucket = memory.buckets[0]
    g = torch.Generator().manual_seed(0)

    def add(frame: int) -> None:
        key = torch.randn(1, 2, 1, 2, generator=g)
        values = torch.randn(1, 1, 3, 1, 2, generator=g)
        memory.add(key, 1 + torch.rand(1, 1, 1, 2, generator=g), torch.rand(1, 2, 1, 2, generator=g), values)

    add(0)
    add(1)
    memory.read(torch.randn(1, 2, 1, 2, generator=g), torch.rand(1, 2, 1, 2, generator=g))
    assert bucket.life is not None and bucket.life[0].tolist() == pytest.approx([1.0, 1.0])
    candidates = (
        bucket.keys[:, :, 2:4].clone(),
        bucket.shrinkage[:, :, 2:4].clone(),
        bucket.selection[:, :, :2].clone(),
        bucket.values[..., 2:4].clone(),
        bucket.use.clone(),
    )
    add(2)  # 2 non-permanent frames: frame 1 is consolidated into 1 prototype
    keys, shrinkage, selection, values, use = candidates
    best = int(use[0].argmax())
    assert bucket.long is not None and bucket.long.size == 1
    assert torch.equal(bucket.long.keys[0, :, 0], keys[0, :, best])
    weights = torch.softmax(
        similarity(keys, shrinkage, keys[:, :, best : best + 1], selection[:, :, best : best + 1])[0, :, 0], 0
    )
    assert torch.allclose(bucket.long.values[0, 0, :, 0], (values[0, 0] * weights).sum(-1))
    assert torch.allclose(bucket.long.shrinkage[0, 0, 0], (shrinkage[0, 0] * weights).sum())
    assert bucket.size == 4 and bucket.permanent == 2  # frame 0 (permanent) and frame 2

    sizes = []
    for frame in range(3, 12):
        memory.read(torch.randn(1, 2, 1, 2, generator=g), torch.rand(1, 2, 1, 2, generator=g))
        add(frame)
        sizes.append(bucket.long.size)
        assert bucket.size == 4 and memory.working_frames == 2
    # One prototype per consolidation until 3 = max_num_tokens - num_prototypes, then the
    # 2 most used survive and the new prototype joins them.
    assert sizes == [2, 3, 3, 3, 3, 3, 3, 3, 3]


def test_memory_settings_from_the_inference_config() -> None:
    fifo = memory_settings(InferenceConfig(top_k=30))
    assert (fifo.max_mem_frames, fifo.long_term, fifo.top_k) == (5, False, 30)
    long = memory_settings(InferenceConfig(max_memory_frames=10, top_k=7))
    assert (long.max_mem_frames, long.min_mem_frames, long.long_term) == (10, 5, True)
    assert (long.num_prototypes, long.max_num_tokens, long.buffer_tokens, long.top_k) == (
        128,
        10_000,
        2_000,
        7,
    )
    with pytest.raises(UserError, match="max_memory_frames"):
        memory_settings(InferenceConfig(max_memory_frames=1))
    assert stagger_frames(5) == frozenset({1, 2, 3, 4, 5})
    assert stagger_frames(10, 5) == frozenset({1, 3, 6, 8, 10})


def test_propagator_contract() -> None:
    model = tiny_model()
    with pytest.raises(UserError, match="include_last"):
        model.propagator(InferenceConfig(include_last=True))
    propagator = model.propagator(InferenceConfig(top_k=30))
    assert isinstance(propagator, CutiePropagator) and propagator.segments_every_frame
    images, masks = video(3, (32, 48), enter=1)
    batch = propagator.encode_frames(images)
    one = batch.index(1)
    assert isinstance(one, CutieFeatures) and one.key.shape == (1, 32, 2, 3)
    alone = propagator.encode_frames(images[1:2])
    assert torch.allclose(one.pix_feat, alone.pix_feat, atol=1e-5)
    copy = batch.index(slice(1, 3)).clone()
    assert (
        copy.f4.shape[0] == 2
        and copy.f4.untyped_storage().data_ptr() != batch.f4.untyped_storage().data_ptr()
    )

    memory = propagator.new_memory()
    memory.add_objects(1)
    prob, _ = overlay(None, [], masks[0])
    with pytest.raises(ValueError, match="temporary"):
        propagator.memorize(memory, images[:1], batch.index(0), prob, TEMPORARY)
    propagator.memorize(memory, images[:1], batch.index(0), prob, PERMANENT, pinned=True)
    assert memory.num_objects == 1 and memory.peak_frames == 1 and memory.frame == 1
    out = propagator.segment(memory, images[1:2], batch.index(1))
    assert out.shape == (1, 2, 32, 48) and out.dtype == torch.float32
    assert torch.allclose(out.sum(1), torch.ones(1, 32, 48), atol=1e-5)


def test_sensory_memory_updates_on_the_stagger_frames_only() -> None:
    model = tiny_model()
    propagator = model.propagator(InferenceConfig(mem_every=10, top_k=30))
    images, masks = video(4, (32, 48), enter=3)
    memory = propagator.new_memory()
    memory.add_objects(1)
    prob, _ = overlay(None, [], masks[0])
    propagator.memorize(memory, images[:1], propagator.encode_frames(images[:1]), prob, PERMANENT)
    states = [memory.sensory.clone()]
    for t in (1, 2, 3):  # offsets 1 and 3 update (stagger {1, 3, 6, 8, 10}), 2 does not
        features = propagator.encode_frames(images[t : t + 1])
        prob = propagator.segment(memory, images[t : t + 1], features)
        propagator.memorize(memory, images[t : t + 1], features, prob, None)
        states.append(memory.sensory.clone())
    assert not torch.equal(states[0], states[1])
    assert torch.equal(states[1], states[2])
    assert not torch.equal(states[2], states[3])
    assert memory.peak_frames == 1 and memory.frame == 4


def test_objects_enabled_later_get_their_own_bucket_state() -> None:
    model = tiny_model()
    propagator = model.propagator(InferenceConfig(mem_every=5, top_k=30))
    images, masks = video(8, (48, 64), enter=4)
    seen = []
    drive(
        propagator,
        images,
        masks,
        5,
        after_frame=lambda m: seen.append(
            (
                [(b.first, b.stop, b.size) for b in m.store.buckets],
                tuple(m.sensory.shape),
                tuple(m.summaries.shape),
            )
        ),
    )
    tokens = 3 * 4
    assert seen[0] == ([(0, 1, tokens)], (1, 1, 32, 3, 4), (1, 1, 8, 65))
    assert seen[3] == seen[0]
    # Frame 4 enables object 2: a new bucket whose permanent frame is frame 4; object 1's
    # bucket takes frame 4 as ordinary memory.
    assert seen[4] == ([(0, 1, 2 * tokens), (1, 2, tokens)], (1, 2, 32, 3, 4), (1, 2, 8, 65))
    assert seen[7] == seen[4]


# Recorded from the propagator on the tiny model (seeded_weights(seed=0)), video(12, (64, 96),
# enter=5), mem_every 3: per frame, the mean probability of each channel (background first).
RECORDED_MEANS = {
    1: [0.492209, 0.507791],
    4: [0.476464, 0.523537],
    5: [0.380548, 0.556952, 0.0625],
    6: [0.100426, 0.316741, 0.582833],
    9: [0.139495, 0.451129, 0.409376],
    11: [0.126489, 0.406041, 0.46747],
}
RECORDED_LABEL_COUNTS = {
    1: [2579, 3565],
    4: [2448, 3696],
    5: [2182, 3578, 384],
    6: [276, 16, 5852],
    9: [382, 5343, 419],
    11: [129, 397, 5618],
}


def test_recorded_run_of_the_tiny_model() -> None:
    propagator = tiny_model().propagator(InferenceConfig(mem_every=3, top_k=30))
    images, masks = video(12, (64, 96), enter=5)
    with torch.inference_mode():
        out = drive(propagator, images, masks, 3)
    for t, means in RECORDED_MEANS.items():
        assert out[t].mean(dim=(1, 2)).tolist() == pytest.approx(means, abs=2e-5)
        counts = np.bincount(out[t].argmax(0).flatten().numpy(), minlength=len(means)).tolist()
        assert counts == pytest.approx(RECORDED_LABEL_COUNTS[t], abs=3)


def test_the_engine_drives_cutie_as_the_recorded_loop() -> None:
    # The engine (twoshot infer's path) over uint8 frames equals the loop above, so the
    # recorded values hold for it too; 64x96 needs neither resizing nor padding.
    model = tiny_model()
    rgb, labels = random_video(12, (64, 96), object_ids=(1, 2), first_frames={2: 5}, seed=0)
    given = {0: labels[0], 5: np.where(labels[5] == 2, 2, 0).astype(np.uint8)}
    engine = PropagationEngine(model, InferenceConfig(mem_every=3, top_k=30, size=-1, device="cpu"))
    result = engine.propagate(rgb, given, probabilities=True)
    assert result.probabilities is not None and result.object_ids == [1, 2]
    images, masks = video(12, (64, 96), enter=5)
    with torch.inference_mode():
        out = drive(model.propagator(InferenceConfig(mem_every=3, top_k=30)), images, masks, 3)
    for t, expected in enumerate(out):
        got = torch.from_numpy(result.probabilities[t])
        assert torch.equal(got[: expected.shape[0]], expected)
        assert not got[expected.shape[0] :].any()  # object 2 before its annotation
    assert result.stats.segmented == 11 and result.stats.value_encodes == 4  # memory: frames 0, 3, 5, 8


def test_bidirectional_runs_keep_their_own_memory_and_sensory_state() -> None:
    # Labeled frames 2 and 9 of 12: frames 0-1 come from the backward run of 2, 3-5 from its
    # forward run, 6-8 from the backward run of 9, 10-11 from its forward run. Each run must
    # equal a forward propagation of its own frames alone (no state shared between runs).
    model = tiny_model()
    rgb, labels = random_video(12, (64, 96), object_ids=(1, 2), seed=4)
    engine = PropagationEngine(model, InferenceConfig(mem_every=2, top_k=30, size=-1, device="cpu"))
    both = engine.propagate(rgb, {2: labels[2], 9: labels[9]}, direction="bidirectional")
    assert both.sources == [2, 2, 2, 2, 2, 2, 9, 9, 9, 9, 9, 9]
    for order, outputs in (
        ([2, 1, 0], [1, 0]),
        ([2, 3, 4, 5], [3, 4, 5]),
        ([9, 8, 7, 6], [8, 7, 6]),
        ([9, 10, 11], [10, 11]),
    ):
        alone = engine.propagate(rgb[order], {0: labels[order[0]]}).masks
        for position, frame in enumerate(order):
            if frame in outputs:
                np.testing.assert_array_equal(both.masks[frame], alone[position])
    np.testing.assert_array_equal(both.masks[[2, 9]], labels[[2, 9]])


def test_long_term_memory_stays_bounded_over_a_long_video(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = MemorySettings(
        max_mem_frames=4,
        long_term=True,
        min_mem_frames=2,
        num_prototypes=8,
        max_num_tokens=40,
        buffer_tokens=8,
        top_k=30,
    )
    propagator = CutiePropagator(
        tiny_model(), InferenceConfig(mem_every=1, top_k=30, max_memory_frames=4), settings=settings
    )
    images, masks = video(60, (64, 64), enter=20)
    frames, long_tokens, drops = [], [], []
    keep = _LongTerm.keep_most_used

    def counted(self: _LongTerm, count: int) -> None:
        drops.append((self.size, count))
        keep(self, count)

    monkeypatch.setattr(_LongTerm, "keep_most_used", counted)

    def record(memory) -> None:  # type: ignore[no-untyped-def]
        frames.append(memory.store.working_frames)
        long_tokens.append(memory.store.long_term_tokens)

    with torch.inference_mode():
        out = drive(propagator, images, masks, 1, after_frame=record)
    assert max(frames) <= 4 and max(long_tokens) <= 40
    # 16 entries a frame: 2 frames -> 8 prototypes per consolidation, until the long-term memory
    # holds 32 = max_num_tokens - num_prototypes; then the 24 most used survive each time.
    assert long_tokens[-1] == 32 and len(drops) >= 5 and set(drops) == {(32, 24)}
    assert all(
        torch.isfinite(p).all() and torch.allclose(p.sum(0), torch.ones(64, 64), atol=1e-5) for p in out
    )
    assert out[-1].shape[0] == 3


def test_pad_value_is_black_after_normalisation() -> None:
    black = normalize_images(torch.zeros(1, 3, 2, 2))  # what the reference's padding becomes
    pad_value = torch.tensor(CutiePropagator.pad_value).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.equal(black, pad_value)
