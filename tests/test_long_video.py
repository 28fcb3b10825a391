"""Long videos and the inference fast path: the memory cap keeps annotated frames and never
grows past its size, nothing per frame is kept when outputs are streamed, streamed PNGs equal
the in-memory ones (and a failed video leaves no folder), channels-last and torch.compile
options give the plain path's masks (up to float ties), compile falls back cleanly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import make_davis, make_youtube, random_video
from twoshot.data.readers import open_dataset
from twoshot.inference import PropagationEngine
from twoshot.inference.predict import LazyFrames, predict_sequences
from twoshot.model import STCN, build_model
from twoshot.model.stcn.memory_store import MemoryStore


@pytest.fixture()
def model() -> STCN:
    # Function-scoped: the channels-last test converts the weights' layout in place.
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


def _engine(model: STCN, **settings: object) -> PropagationEngine:
    config = InferenceConfig(**{"size": -1, "device": "cpu", **settings})  # type: ignore[arg-type]
    return PropagationEngine(model, config)


@pytest.fixture()
def bank_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int | None, list[tuple[int, bool]]]]]:
    """Every MemoryStore state right after an ``add``: (cap, [(serial, pinned) per entry])."""
    log: list[tuple[int | None, list[tuple[int, bool]]]] = []
    original = MemoryStore.add

    def add(self: MemoryStore, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        log.append((self.max_frames, [(e.serial, e.pinned) for e in self.entries]))

    monkeypatch.setattr(MemoryStore, "add", add)
    yield log


def _check_cap(log: list[tuple[int | None, list[tuple[int, bool]]]]) -> None:
    """The cap holds (annotated frames beyond it excepted), every annotated frame added is
    still there, and the frames kept besides them are the newest ones."""
    pinned_seen: set[int] = set()
    others_seen: set[int] = set()
    last_serial = -1
    for cap, entries in log:
        assert cap is not None
        serials = [s for s, _ in entries]
        if serials[-1] < last_serial:  # a new run (a new bank) started
            pinned_seen, others_seen = set(), set()
        last_serial = serials[-1]
        pinned = {s for s, p in entries if p}
        others = [s for s, p in entries if not p]
        pinned_seen |= pinned
        others_seen |= set(others)
        assert pinned_seen <= pinned, "an annotated frame was dropped"
        assert len(entries) <= max(cap, len(pinned))
        # The other frames kept are the newest ones, in the order they were added.
        assert others == sorted(others_seen)[len(others_seen) - len(others) :]


def test_memory_never_exceeds_the_cap_and_keeps_labeled_frames(model: STCN, bank_log: list) -> None:
    frames, labels = random_video(48, (32, 40), object_ids=(1, 2), seed=11)
    # Two labeled frames, both directions: four runs, each with its own capped bank.
    result = _engine(model, mem_every=1, max_memory_frames=3).propagate(
        frames, {12: labels[12], 36: labels[36]}, direction="bidirectional"
    )
    assert result.stats.runs == 4 and result.stats.peak_memory_frames == 3
    assert len(bank_log) > 40
    _check_cap(bank_log)
    np.testing.assert_array_equal(result.masks[[12, 36]], labels[[12, 36]])

    # Objects appearing later (forward direction): three annotated frames and a cap of 2. The
    # annotated frames stay although they exceed the cap; other frames come and go.
    frames, labels = random_video(30, (36, 40), object_ids=(1, 2, 3), first_frames={2: 6, 3: 14}, seed=12)
    given = {
        0: np.where(labels[0] == 1, 1, 0).astype(np.uint8),
        6: np.where(labels[6] == 2, 2, 0).astype(np.uint8),
        14: np.where(labels[14] == 3, 3, 0).astype(np.uint8),
    }
    bank_log.clear()
    capped = _engine(model, mem_every=2, max_memory_frames=2).propagate(frames, given)
    _check_cap(bank_log)
    _, final_entries = bank_log[-1]
    assert [s for s, p in final_entries if p] == [0, 3, 7]  # the serials of frames 0, 6, 14
    assert len(final_entries) == 3  # only the annotated frames fit
    assert capped.stats.peak_memory_frames == 3


def test_a_cap_larger_than_the_memory_changes_nothing(model: STCN) -> None:
    frames, labels = random_video(26, (32, 40), seed=13)
    free = _engine(model, mem_every=3).propagate(frames, {0: labels[0]})
    roomy = _engine(model, mem_every=3, max_memory_frames=free.stats.peak_memory_frames)
    np.testing.assert_array_equal(roomy.propagate(frames, {0: labels[0]}).masks, free.masks)


def test_key_cache_does_not_grow_with_the_video(model: STCN) -> None:
    peaks = []
    for length in (16, 64):
        frames, labels = random_video(length, (24, 32), seed=14)
        result = _engine(model, key_batch=4).propagate(
            frames,
            {length // 4: labels[length // 4], 3 * length // 4: labels[3 * length // 4]},
            direction="bidirectional",
        )
        peaks.append(result.stats.peak_cached_frames)
    # A batch, plus a labeled frame kept for its second run, however long the video.
    assert max(peaks) <= 4 + 2


# ---------------------------------------------------------------------------------------------
# Streaming outputs


@pytest.mark.parametrize("direction,given_frames", [("forward", (3,)), ("bidirectional", (4, 15))])
def test_engine_yields_each_frame_once_as_propagate_collects(
    model: STCN, direction: str, given_frames: tuple[int, ...]
) -> None:
    frames, labels = random_video(20, (32, 40), seed=15)
    given = {f: labels[f] for f in given_frames}
    engine = _engine(model, mem_every=3)
    full = engine.propagate(frames, given, direction=direction, confidence=True, probabilities=True)
    propagation = engine.frames(frames, given, direction=direction, confidence=True, probabilities=True)
    assert propagation.object_ids == full.object_ids and propagation.size == (32, 40)
    seen: list[int] = []
    for out in propagation:
        # The consumer's code between frames runs outside inference mode.
        assert not torch.is_inference_mode_enabled()
        seen.append(out.frame)
        assert out.source == full.sources[out.frame]
        np.testing.assert_array_equal(out.labels, full.masks[out.frame])
        assert full.confidence is not None and full.probabilities is not None
        np.testing.assert_array_equal(out.confidence, full.confidence[out.frame])
        assert out.probabilities is not None
        channels = [0] + [full.object_ids.index(o) + 1 for o in out.object_ids]
        np.testing.assert_array_equal(out.probabilities.numpy(), full.probabilities[out.frame, channels])
    assert sorted(seen) == list(range(20))
    if direction == "bidirectional":
        assert seen[:2] == list(given_frames)  # the labeled frames come first
    else:
        assert seen[-3:] == [0, 1, 2]  # frames before the annotation come last
    assert propagation.stats.runs == full.stats.runs and propagation.stats.seconds > 0


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_streamed_pngs_equal_the_in_memory_ones(
    model: STCN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 9, "cat": 7}, size=(40, 56))
    sequences = open_dataset("davis", data.root, "val")
    config = InferenceConfig(size=-1, device="cpu", mem_every=3)
    for backward in (False, True):
        whole, streamed = tmp_path / f"whole{backward}", tmp_path / f"streamed{backward}"
        predict_sequences(
            model, sequences, whole, config, overlay=True, backward=backward, progress=False, stream=False
        )
        with monkeypatch.context() as patch:
            # The streaming path reads frames one at a time, never the whole video.
            patch.setattr(
                "twoshot.data.readers.load_frames",
                lambda *a, **k: pytest.fail("load_frames called while streaming"),
            )
            predict_sequences(
                model,
                sequences,
                streamed,
                config,
                overlay=True,
                backward=backward,
                progress=False,
                stream=True,
            )
        files = _tree(whole)
        assert len(files) == 2 * (9 + 7) and files == _tree(streamed)

    # YouTube-VOS submission: only the frames meta.json lists, objects appearing later.
    youtube = make_youtube(tmp_path / "yt", split="valid", size=(40, 56))
    sequences = open_dataset("youtube", youtube.root, "valid")
    assert any(seq.frames_to_save and len(seq.frames_to_save) < seq.num_frames for seq in sequences)
    for stream in (False, True):
        predict_sequences(
            model, sequences, tmp_path / f"yt{stream}", config, youtube=True, progress=False, stream=stream
        )
    assert _tree(tmp_path / "ytFalse") == _tree(tmp_path / "ytTrue") != {}


def test_long_videos_are_streamed_by_default(
    model: STCN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_davis(tmp_path / "davis", {"long": 8, "short": 3}, size=(32, 40))
    sequences = open_dataset("davis", data.root, "val")
    # Pretend a frame budget of 5 frames: the 8-frame video streams, the 3-frame one does not.
    monkeypatch.setattr("twoshot.inference.predict.STREAM_MIN_BYTES", 5 * 32 * 40 * 3)
    calls: list[bool] = []
    original = PropagationEngine.frames

    def spy(self: PropagationEngine, frames: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(isinstance(frames, LazyFrames))  # read frame by frame
        return original(self, frames, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PropagationEngine, "frames", spy)
    predict_sequences(
        model, sequences, tmp_path / "out", InferenceConfig(size=-1, device="cpu"), progress=False
    )
    assert calls == [True, False]  # sequences are sorted: "long", then "short"


def test_a_failure_while_streaming_leaves_no_video_folder(
    model: STCN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 8}, size=(32, 40))
    sequences = open_dataset("davis", data.root, "val")
    from twoshot.data import masks as masks_module

    original, count = masks_module.write_mask, [0]

    def failing(*args: object, **kwargs: object) -> None:
        count[0] += 1
        if count[0] == 4:
            raise OSError("disk full")
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(masks_module, "write_mask", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        predict_sequences(
            model,
            sequences,
            out,
            InferenceConfig(size=-1, device="cpu"),
            overlay=True,
            progress=False,
            stream=True,
        )
    assert not (out / "bear").exists() and not (out / "overlays" / "bear").exists()
    assert not [p for p in out.rglob("*") if p.is_file() or p.name.startswith(".")]


def test_lazy_frames_read_on_demand_and_check_sizes(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 4}, size=(32, 40))
    seq = open_dataset("davis", data.root, "val")[0]
    frames = LazyFrames(seq)
    assert len(frames) == 4 and frames[2].shape == (32, 40, 3) and len(frames[1:3]) == 2
    from PIL import Image

    Image.new("RGB", (20, 16)).save(seq.frame_paths[3])
    from twoshot.errors import UserError

    with pytest.raises(UserError, match="00003.jpg: frame is 20x16 but 00000.jpg is 40x32"):
        frames[3]


# ---------------------------------------------------------------------------------------------
# Fast path options


def test_default_fast_path_gives_the_exact_masks_up_to_float_ties(model: STCN) -> None:
    """The default engine (channels-last, the fast copy) against ``exact``."""
    frames, labels = random_video(10, (48, 64), object_ids=(1, 2), seed=16)
    plain = _engine(model, exact=True).propagate(frames, {0: labels[0]}, probabilities=True)
    fast_engine = _engine(model)
    assert fast_engine.model.key_encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    fast = fast_engine.propagate(frames, {0: labels[0]}, probabilities=True)
    assert plain.probabilities is not None and fast.probabilities is not None
    # NHWC kernels sum in another order: probabilities agree to float rounding ...
    assert np.abs(plain.probabilities - fast.probabilities).max() < 1e-5
    # ... and a mask pixel may only differ where two classes tie to that rounding.
    top2 = np.sort(plain.probabilities, axis=1)[:, -2:]
    differ = plain.masks != fast.masks
    assert differ.mean() < 1e-3
    assert (top2[:, 1] - top2[:, 0])[differ].max(initial=0) < 1e-5
    # A later exact engine on the same model returns to the default layout: bit-identical.
    again = _engine(model, exact=True).propagate(frames, {0: labels[0]})
    np.testing.assert_array_equal(again.masks, plain.masks)


def test_compile_falls_back_to_eager_when_unavailable(model: STCN, monkeypatch: pytest.MonkeyPatch) -> None:
    frames, labels = random_video(8, (32, 40), seed=17)
    plain = _engine(model).propagate(frames, {0: labels[0]}).masks

    def broken_compile(fn: object, **_: object) -> object:
        def compiled(*args: object) -> object:
            raise RuntimeError("inductor: no working C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="without torch.compile"):
        masks = _engine(model, compile=True).propagate(frames, {0: labels[0]}).masks
    np.testing.assert_array_equal(masks, plain)
    monkeypatch.delattr(torch, "compile")
    with pytest.warns(RuntimeWarning, match="no torch.compile"):
        masks = _engine(model, compile=True).propagate(frames, {0: labels[0]}).masks
    np.testing.assert_array_equal(masks, plain)


@pytest.mark.skipif(
    not os.environ.get("TWOSHOT_TEST_COMPILE"),
    reason="compiling takes a minute or more on 2 CPU cores; set TWOSHOT_TEST_COMPILE=1",
)
def test_compiled_engine_matches_the_plain_one(model: STCN) -> None:
    frames, labels = random_video(8, (32, 48), seed=18)
    plain = _engine(model).propagate(frames, {0: labels[0]}, probabilities=True)
    fast = _engine(model, compile=True, key_batch=8).propagate(frames, {0: labels[0]}, probabilities=True)
    assert plain.probabilities is not None and fast.probabilities is not None
    assert np.abs(plain.probabilities - fast.probabilities).max() < 1e-4
    assert (plain.masks != fast.masks).mean() < 1e-3


def test_frames_on_demand_indexing() -> None:
    """Ints (negative too) and slices go through ``frame``; out of range is an IndexError."""
    from twoshot.inference.key_cache import FramesOnDemand

    class Counting(FramesOnDemand):
        def __len__(self) -> int:
            return 5

        def frame(self, index: int) -> np.ndarray:
            return np.full((2, 3, 3), index, dtype=np.uint8)

    frames = Counting()
    assert int(frames[3][0, 0, 0]) == 3 and int(frames[-1][0, 0, 0]) == 4
    assert [int(f[0, 0, 0]) for f in frames[1:5:2]] == [1, 3]
    assert [int(f[0, 0, 0]) for f in frames] == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError, match="frame 5 of a 5-frame video"):
        frames[5]


# -- SAM 2: bounded by design; max_memory_frames caps the given frames read; offload ---------


@pytest.fixture(scope="module")
def sam2_model() -> torch.nn.Module:
    torch.manual_seed(0)
    sam = build_model(load_config("sam2-toy", overrides=["model.sam2.image_size=64"]).model)
    with torch.no_grad():  # random weights that see the objects: masks are not empty
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    return sam.eval()


def _sam2_run(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, length: int = 40, **settings: object
) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """Forward run over ``length`` frames given on :data:`GIVEN` frames -> (labels [T, H, W],
    after each processed frame the (conditioning, tracked) frames each object holds)."""
    from twoshot.model.sam2.propagator import Sam2Propagator, Sam2RunMemory

    frames, labels = random_video(length, (48, 64), object_ids=(1, 2), seed=5)
    sizes: list[list[tuple[int, int]]] = []
    original = getattr(Sam2Propagator.memorize, "__wrapped__", Sam2Propagator.memorize)  # not a spy

    def memorize(self: Sam2Propagator, memory: Sam2RunMemory, *args: object, **kwargs: object) -> None:
        original(self, memory, *args, **kwargs)  # type: ignore[arg-type]
        sizes.append([(len(t.conditioning), len(t.recent)) for t in memory.tracks])

    memorize.__wrapped__ = original  # type: ignore[attr-defined]
    monkeypatch.setattr(Sam2Propagator, "memorize", memorize)
    config = load_config("sam2-toy").inference
    engine = PropagationEngine(model, InferenceConfig(**{**config.__dict__, "device": "cpu", **settings}))
    given = {f: labels[f] for f in GIVEN if f < length}
    return engine.propagate(frames, given).masks, sizes  # forward


GIVEN = range(0, 19, 6)


def test_sam2_memory_stays_bounded_and_the_cap_keeps_the_nearest_given_frames(
    sam2_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    free, free_sizes = _sam2_run(sam2_model, monkeypatch)
    capped, capped_sizes = _sam2_run(sam2_model, monkeypatch, max_memory_frames=8)
    assert len(free_sizes) == len(capped_sizes) == 40
    # Every given frame is read from the start (as the reference reads them: the later ones
    # are taken right after frame 0 is memorised); tracked frames stop at 15 (the pointers' reach).
    assert free_sizes[0] == [(1, 0), (1, 0)]
    assert all(c == len(GIVEN) for s in free_sizes[1:] for c, _ in s)
    assert max(n for s in free_sizes for _, n in s) == 15
    # Capped at 8 (6 previous + 2 given frames): of the passed given frames only the 2 newest
    # stay conditioning frames (no later frame can choose an older one); the later given
    # frames are held until passed. After the last given frame nothing grows.
    passed = [sum(1 for g in GIVEN if g <= t) for t in range(40)]
    expected = [1] + [min(p, 2) + len(GIVEN) - p for p in passed[1:]]
    assert [s[0][0] for s in capped_sizes] == [s[1][0] for s in capped_sizes] == expected
    held = [max(c + n for c, n in s) for s in capped_sizes]
    assert max(held[18:]) <= 2 + 15 and held[33:] == [held[-1]] * 7
    assert not np.array_equal(capped, free)  # the cap changes what is read
    # A cap that holds every given frame changes nothing.
    roomy, _ = _sam2_run(sam2_model, monkeypatch, max_memory_frames=6 + len(GIVEN))
    np.testing.assert_array_equal(roomy, free)


def test_sam2_refuses_caps_it_cannot_apply_and_offload_is_sam2_only() -> None:
    from twoshot.errors import UserError

    with pytest.raises(UserError) as error:
        load_config("sam2-toy", overrides=["inference.max_memory_frames=7"])
    assert str(error.value) == (
        "config key 'inference.max_memory_frames': SAM 2 reads its 6 previous frames and at least 2 "
        "given frames, so it takes at least 8 (or null: every given frame), got 7"
    )
    load_config("sam2-toy", overrides=["inference.max_memory_frames=8", "inference.offload=true"])
    with pytest.raises(UserError) as error:
        load_config("tiny", overrides=["inference.offload=true"])
    assert str(error.value) == (
        "inference.offload: the stcn model keeps its features on the device; only sam2 can offload them"
    )


def test_sam2_offload_keeps_features_and_memories_on_the_cpu_with_the_same_masks(
    sam2_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twoshot.model.sam2.propagator import Sam2Propagator

    stored: list[torch.device] = []
    original = Sam2Propagator._frame_memory

    def frame_memory(self: Sam2Propagator, *args: object, **kwargs: object) -> object:
        memory = original(self, *args, **kwargs)  # type: ignore[arg-type]
        stored.extend(t.device for t in (memory.features, memory.positions, memory.pointer))
        return memory

    monkeypatch.setattr(Sam2Propagator, "_frame_memory", frame_memory)
    plain, _ = _sam2_run(sam2_model, monkeypatch, 10)
    offloaded, _ = _sam2_run(sam2_model, monkeypatch, 10, offload=True)
    np.testing.assert_array_equal(offloaded, plain)
    assert stored and set(stored) == {torch.device("cpu")}
    config = InferenceConfig(size=-1, device="cpu", offload=True)
    propagator = PropagationEngine(sam2_model, config).propagator
    assert isinstance(propagator, Sam2Propagator) and propagator.storage_device == torch.device("cpu")
    features = propagator.encode_frames(torch.zeros(2, 3, 64, 64))
    assert {t.device for t in (*features.high_res, features.features, features.positions)} == {
        torch.device("cpu")
    }
