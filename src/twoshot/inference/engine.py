"""The propagation engine: STCN inference over a video, forward or from labeled frames both ways.

For one video the engine

1. plans its runs (:mod:`twoshot.inference.schedule`): STCN's forward evaluation, or the
   two-shot "nearest labeled frame" bidirectional scheme;
2. announces every frame each run will touch to a :class:`~twoshot.inference.key_cache.KeyCache`,
   which encodes each frame's key features once, in batches, shared by all objects and runs;
3. executes each run with its own :class:`~twoshot.inference.memory_bank.MemoryBank`:
   segment (memory read, decoder, soft aggregation), overlay annotated masks, encode the
   values of all objects of a memory frame in one ``encode_value`` call;
4. maps each output to the original size (unpad, bilinear upsampling, argmax -> object ids)
   and either stores it in [T, H, W] arrays or, with a ``sink``, hands each frame over as
   soon as it is final (long videos: nothing kept per frame, see ``propagate``).

Fast-path options (``InferenceConfig``): ``amp`` (autocast on CUDA, to float16 or, with
``amp_dtype``, bfloat16), ``channels_last`` (NHWC convolutions; not bit-identical to the
default layout, see docs/performance.md) and ``compile`` (``torch.compile`` of the encoders
and the decoder, falling back to eager execution where compiling is unavailable or fails).

Masks equal those of STCN's ``InferenceCore`` (DAVIS) / ``inference_core_yv`` (YouTube-VOS)
for the same weights and settings; see ``tests/test_inference.py``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from twoshot.config import InferenceConfig
from twoshot.errors import UserError
from twoshot.inference.geometry import Geometry, labels_from_prob, prepare_masks, to_original
from twoshot.inference.key_cache import FrameSource, KeyCache
from twoshot.inference.memory_bank import MemoryBank
from twoshot.inference.schedule import TEMPORARY, Run, forward_runs, nearest_runs
from twoshot.model.aggregate import aggregate
from twoshot.model.network import STCN

MODES: tuple[str, ...] = ("forward", "bidirectional")
_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

FrameSink = Callable[[int, np.ndarray, "np.ndarray | None"], None]
"""``sink(frame, labels, confidence)``: labels uint8 [H, W] object ids of a final frame,
confidence uint8 [H, W] (max probability x 255) or None when not asked for."""


@dataclass
class EngineStats:
    """Work done for one video (for tests, benchmarks and summaries).

    key_encodes: frames through the key encoder (each frame at most once when planned);
    encoder_calls: batched ``encode_key`` calls; value_encodes: ``encode_value`` calls (one
    per memory frame, all objects batched); segmented: frames segmented from memory;
    peak_memory_frames: largest permanent memory of any run; peak_cached_frames: most key
    features held at once; runs: propagation runs; seconds: wall time.
    """

    key_encodes: int = 0
    encoder_calls: int = 0
    value_encodes: int = 0
    segmented: int = 0
    peak_memory_frames: int = 0
    peak_cached_frames: int = 0
    runs: int = 0
    seconds: float = 0.0


@dataclass
class PropagationResult:
    """The outputs for one video, at the original frame size.

    masks: uint8 [T, H, W] object ids (0 = background; frames not covered are all 0);
        [0, H, W] when the frames went to a sink (``streamed``).
    object_ids: the video's object ids, ascending (the channel order of ``probabilities``).
    sources: per frame, the annotated frame whose propagation gave it (None: not covered).
    confidence: uint8 [T, H, W], max probability x 255 (when asked for and not streamed).
    probabilities: float32 [T, K+1, H, W], background first then ``object_ids`` (when asked).
    streamed: the per-frame outputs were handed to a sink instead of being kept here.
    """

    masks: np.ndarray
    object_ids: list[int]
    sources: list[int | None]
    confidence: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    stats: EngineStats = field(default_factory=EngineStats)
    streamed: bool = False


class PropagationEngine:
    """Runs STCN inference with ``model`` under ``config`` on ``device``.

    The model is moved to ``device`` and put in eval mode, its convolution weights in
    channels-last memory when ``config.channels_last`` and in the default layout otherwise
    (in place, values unchanged: one layout per model at a time). :attr:`key_batch` frames
    are key-encoded per call; ``config.amp`` enables autocast to ``config.amp_dtype``
    (float16 or bfloat16) on CUDA (CPU runs fp32); ``config.compile`` runs the key encoder,
    value encoder and decoder through ``torch.compile`` (compiled on first use, per engine).
    """

    def __init__(self, model: STCN, config: InferenceConfig | None = None,
                 device: torch.device | str | None = None) -> None:
        self.config = config or InferenceConfig()
        self.amp_dtype = _AMP_DTYPES.get(self.config.amp_dtype)
        if self.amp_dtype is None:
            raise UserError(f"config key 'inference.amp_dtype': {self.config.amp_dtype!r} is not "
                            f"one of {', '.join(_AMP_DTYPES)}")
        if device is None:
            from twoshot.devices import resolve_device
            device = resolve_device(self.config.device)
        self.device = torch.device(device)
        # The layout is set both ways: weights an earlier channels-last engine converted
        # would otherwise make every convolution here NHWC too.
        self.memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        compile_ = self.config.compile
        self.encode_key = _maybe_compiled(self.model.encode_key, "encode_key", compile_)
        self.encode_value = _maybe_compiled(self.model.encode_value, "encode_value", compile_)
        self.decode = _maybe_compiled(self.model.decode, "decode", compile_)

    @property
    def key_batch(self) -> int:
        """Frames per key-encoder call: ``config.key_batch``, or 8 on CUDA and 1 on a CPU."""
        if self.config.key_batch is not None:
            return self.config.key_batch
        return 8 if self.device.type == "cuda" else 1

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to ``config.amp_dtype`` on CUDA when ``config.amp``; a no-op otherwise."""
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def propagate(self, frames: FrameSource, masks_by_frame: Mapping[int, np.ndarray], *,
                  mode: str = "forward", output_frames: Collection[int] | None = None,
                  confidence: bool = False, probabilities: bool = False,
                  progress: Callable[[int], None] | None = None,
                  sink: FrameSink | None = None) -> PropagationResult:
        """Segment the annotated objects in every frame of one video.

        frames: T frames, uint8 [H, W, 3] each (an array [T, H, W, 3] or a lazy sequence).
        masks_by_frame: {frame index: uint8 [H, W] object ids}. ``forward`` mode (STCN):
            each object starts on the first frame whose mask shows it; later masks add
            objects (YouTube-VOS) or overwrite an object's pixels there. ``bidirectional``
            mode (two-shot pseudo labels): every given frame is a labeled frame showing all
            its objects; each other frame takes the propagation from its nearest labeled
            frame (DESIGN.md section 2), and labeled frames keep their masks.
        output_frames: frames whose result is needed (None = all); others may be skipped.
        confidence / probabilities: also return those arrays (see PropagationResult).
        progress: called with a frame index each time a frame's output is final.
        sink: ``sink(frame, labels, confidence)`` is called once per frame as soon as its
            output is final (any order; frames no run reaches, e.g. before the first
            annotation, come last as background) and nothing per frame is kept, so memory
            does not grow with the video's length; the result's ``masks`` is then [0, H, W].
            Not with ``probabilities``.
        Runs under ``torch.inference_mode``.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if sink is not None and probabilities:
            raise ValueError("probabilities are not streamed: use sink or probabilities, not both")
        with torch.inference_mode():
            return self._propagate(frames, masks_by_frame, mode, output_frames, confidence,
                                   probabilities, progress, sink)

    def _propagate(self, frames: FrameSource, masks_by_frame: Mapping[int, np.ndarray], mode: str,
                   output_frames: Collection[int] | None, confidence: bool, probabilities: bool,
                   progress: Callable[[int], None] | None,
                   sink: FrameSink | None) -> PropagationResult:
        """The body of :meth:`propagate` (arguments checked, under inference mode)."""
        start = time.perf_counter()
        num_frames = len(frames)
        if num_frames == 0:
            raise UserError("empty video: no frames")
        first = np.asarray(frames[0])
        if first.ndim != 3 or first.shape[2] != 3:
            raise UserError(f"frames must be RGB [H, W, 3], got shape {first.shape}")
        height, width = first.shape[:2]
        masks = _check_masks(masks_by_frame, num_frames, (height, width))
        object_ids = sorted({int(o) for m in masks.values() for o in np.unique(m) if o != 0})
        geometry = Geometry.for_frames(height, width, self.config.size)
        cfg = self.config
        wanted = None if output_frames is None else set(int(f) for f in output_frames)
        if mode == "forward":
            runs = forward_runs(num_frames, list(masks), wanted, cfg.mem_every, cfg.include_last)
        else:
            runs = nearest_runs(num_frames, list(masks), wanted, cfg.mem_every, cfg.include_last)

        out = _Collector(num_frames, geometry, object_ids, confidence, probabilities, progress, sink)
        if mode == "bidirectional":
            for frame, labels in masks.items():
                out.put_labels(frame, labels, source=frame)
        cache = KeyCache(self.model, frames, geometry, self.device, self.key_batch, self.autocast,
                         encode=self.encode_key, memory_format=self.memory_format)
        for run in runs:
            cache.plan(run.frames)
        stats = EngineStats(runs=len(runs))
        for run in runs:
            self._execute(run, masks, geometry, cache, out, stats)
        out.fill_uncovered()
        stats.key_encodes = sum(cache.encode_count.values())
        stats.encoder_calls = cache.encoder_calls
        stats.peak_cached_frames = cache.peak_cached
        stats.seconds = time.perf_counter() - start
        return out.result(stats)

    def _execute(self, run: Run, masks: Mapping[int, np.ndarray], geometry: Geometry,
                 cache: KeyCache, out: "_Collector", stats: EngineStats) -> None:
        """Carry out one run's steps with a fresh memory bank."""
        cfg = self.config
        bank = MemoryBank(cfg.max_memory_frames)
        ids: list[int] = []                       # enabled objects, in enabling order
        frames = run.frames
        source = run.source                       # the latest annotated frame processed
        run_ids = sorted({int(o) for frame in run.annotated for o in np.unique(masks[frame]) if o})
        for index, step in enumerate(run.steps):
            cached = cache.acquire(step.frame, frames[index + 1:])
            feats = cached.features
            prob: torch.Tensor | None = None      # [1, 1+K, Hp, Wp], background first
            if step.predict:
                with self.autocast():
                    readout = bank.read(feats.key, cfg.top_k)
                    logits = self.decode(readout, feats)
                prob = aggregate(torch.sigmoid(logits.float()), dim=1)
                stats.segmented += 1
            if step.annotation:
                source = step.frame
                prob, new = _overlay(prob, ids, masks[step.frame], run_ids, geometry, self.device)
                if new:
                    bank.add_objects(len(new))
                    ids.extend(new)
            assert prob is not None
            if step.emit:
                out.put(step.frame, prob[0], ids, source=source)
            if step.memory is not None:
                with self.autocast():
                    values = self.encode_value(cached.image, feats.f16, prob[:, 1:])
                stats.value_encodes += 1
                bank.add(feats.key[0], values[0], temporary=step.memory == TEMPORARY,
                         pinned=step.annotation)
            cache.release(step.frame)
        stats.peak_memory_frames = max(stats.peak_memory_frames, bank.peak_frames)


def _overlay(prob: torch.Tensor | None, ids: list[int], labels: np.ndarray, run_ids: list[int],
             geometry: Geometry, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Put an annotated frame's masks over the propagated probabilities, as STCN's interact.

    prob: [1, 1+K, Hp, Wp] for the enabled objects ``ids`` (None before any object);
    run_ids: every object the run will see, ascending. The annotated objects' pixels are
    cleared in every channel, their channels set to their masks, and the object channels
    soft-aggregated again. Like STCN's YouTube-VOS code this aggregation runs over all of
    ``run_ids`` in id order, objects not enabled yet as zero channels (they shift the other
    probabilities by ~1e-7, which keeps results bit-identical to STCN's).
    Returns (prob [1, 1+K', Hp, Wp] in enabling order, the ids enabled by this frame).
    """
    present = [int(o) for o in np.unique(labels) if o != 0]
    new = [o for o in present if o not in ids]
    onehot = prepare_masks(labels, present, geometry, device)          # [A, Hp, Wp]
    objects = torch.zeros((len(run_ids), *onehot.shape[-2:]), device=device)
    for channel, obj in enumerate(ids):
        objects[run_ids.index(obj)] = prob[0, 1 + channel].float()  # type: ignore[index]
    objects[:, onehot.sum(0) > 0.5] = 0
    for channel, obj in enumerate(present):
        objects[run_ids.index(obj)] = onehot[channel]
    aggregated = aggregate(objects[None], dim=1)
    order = [0] + [1 + run_ids.index(obj) for obj in ids + new]
    if order != list(range(len(run_ids) + 1)):
        aggregated = aggregated[:, order]
    return aggregated, new


def _check_masks(masks_by_frame: Mapping[int, np.ndarray], num_frames: int,
                 size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Validated {frame: uint8 [H, W]} without masks that show no object, sorted by frame."""
    masks: dict[int, np.ndarray] = {}
    for frame, labels in sorted(masks_by_frame.items()):
        frame = int(frame)
        labels = np.asarray(labels)
        if not 0 <= frame < num_frames:
            raise UserError(f"mask given for frame {frame}, but the video has {num_frames} frames")
        if labels.ndim != 2:
            raise UserError(f"mask of frame {frame} must be a 2-D array of object ids, got shape "
                            f"{labels.shape} (an RGB mask?)")
        if labels.shape != size:
            raise UserError(f"mask of frame {frame} is {labels.shape[1]}x{labels.shape[0]} but "
                            f"the frame is {size[1]}x{size[0]}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise UserError(f"mask of frame {frame} has ids outside 0..255")
        if labels.any():
            masks[frame] = labels.astype(np.uint8, copy=False)
    if not masks:
        raise UserError("no object in the given masks (every mask is all background)")
    return masks


class _Collector:
    """Gathers per-frame outputs at the original size: into [T, H, W] result arrays, or, with
    a sink, hands each frame to it and keeps nothing per frame."""

    def __init__(self, num_frames: int, geometry: Geometry, object_ids: list[int],
                 confidence: bool, probabilities: bool,
                 progress: Callable[[int], None] | None = None,
                 sink: FrameSink | None = None) -> None:
        height, width = geometry.original
        self.progress = progress
        self.sink = sink
        self.geometry = geometry
        self.object_ids = object_ids
        self.want_confidence = confidence
        kept = 0 if sink is not None else num_frames
        self.masks = np.zeros((kept, height, width), dtype=np.uint8)
        self.sources: list[int | None] = [None] * num_frames
        self.confidence = (np.zeros((num_frames, height, width), np.uint8)
                           if confidence and sink is None else None)
        self.probabilities = (np.zeros((num_frames, len(object_ids) + 1, height, width), np.float32)
                              if probabilities else None)

    def _emit(self, frame: int, labels: np.ndarray, confidence: np.ndarray | None) -> None:
        """A final frame: store it or hand it to the sink, then report progress."""
        if self.sink is not None:
            self.sink(frame, labels, confidence)
        else:
            self.masks[frame] = labels
            if self.confidence is not None:
                self.confidence[frame] = confidence
        if self.progress is not None:
            self.progress(frame)

    def put(self, frame: int, prob: torch.Tensor, ids: list[int], source: int) -> None:
        """Output frame ``frame`` from its network-resolution probabilities [1+K, Hp, Wp] of ``ids``."""
        full = to_original(prob, self.geometry)
        labels, top = labels_from_prob(full, ids)
        self.sources[frame] = source
        confidence = None
        if self.want_confidence:
            confidence = (top * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        if self.probabilities is not None:
            channels = [0] + [1 + self.object_ids.index(o) for o in ids]
            self.probabilities[frame] = 0
            self.probabilities[frame, channels] = full.cpu().numpy()
        self._emit(frame, labels.cpu().numpy(), confidence)

    def put_labels(self, frame: int, labels: np.ndarray, source: int) -> None:
        """Output a given mask as the result of ``frame`` (certain: confidence 255)."""
        self.sources[frame] = source
        if self.probabilities is not None:
            self.probabilities[frame] = 0
            self.probabilities[frame, 0] = labels == 0
            for channel, obj in enumerate(self.object_ids, start=1):
                self.probabilities[frame, channel] = labels == obj
        self._emit(frame, labels, self._certain() if self.want_confidence else None)

    def fill_uncovered(self) -> None:
        """Frames no run reached are background with certainty."""
        height, width = self.geometry.original
        for frame, source in enumerate(self.sources):
            if source is None:
                if self.probabilities is not None:
                    self.probabilities[frame, 0] = 1
                self._emit(frame, np.zeros((height, width), np.uint8),
                           self._certain() if self.want_confidence else None)

    def _certain(self) -> np.ndarray:
        """Confidence of a frame known for sure: uint8 [H, W] all 255."""
        return np.full(self.geometry.original, 255, np.uint8)

    def result(self, stats: EngineStats) -> PropagationResult:
        """The collected PropagationResult."""
        return PropagationResult(self.masks, self.object_ids, self.sources, self.confidence,
                                 self.probabilities, stats, streamed=self.sink is not None)


class _CompiledOrEager:
    """``torch.compile(fn)``, falling back to ``fn`` itself for good when compiling is not
    available here or fails (no C++ compiler for inductor, an unsupported Python or
    platform, an operator dynamo cannot trace): the fast path must never stop a run."""

    def __init__(self, fn: Callable[..., object], name: str) -> None:
        self.eager = fn
        self.name = name
        self.compiled: Callable[..., object] | None = None
        compile_fn = getattr(torch, "compile", None)
        if compile_fn is None:
            self._fall_back("this torch has no torch.compile")
            return
        try:
            self.compiled = compile_fn(fn)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            self._fall_back(f"{type(exc).__name__}: {exc}")

    def _fall_back(self, why: str) -> None:
        self.compiled = None
        warnings.warn(f"inference compile=True: running {self.name} without torch.compile ({why})",
                      RuntimeWarning, stacklevel=3)

    def __call__(self, *args: object) -> object:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - compilation happens on the first calls
                # A real error in the computation itself is raised again by the eager call.
                self._fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return self.eager(*args)


def _maybe_compiled(fn: Callable[..., object], name: str, enabled: bool) -> Callable[..., Any]:
    """``fn`` itself, or with ``enabled`` a :class:`_CompiledOrEager` wrapper of it."""
    return _CompiledOrEager(fn, name) if enabled else fn
