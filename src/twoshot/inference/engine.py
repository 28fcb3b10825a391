"""The propagation engine: any VOS model over a video, forward or from labeled frames both ways.

For one video the engine

1. plans its runs (:mod:`twoshot.inference.schedule`): the forward evaluation of STCN and
   Cutie, or the two-shot "nearest labeled frame" bidirectional scheme;
2. announces every frame each run will touch to a :class:`~twoshot.inference.key_cache.KeyCache`,
   which encodes each frame once, in batches, shared by all objects and runs;
3. executes each run with a fresh memory from the model's
   :class:`~twoshot.model.interface.Propagator`: segment from memory, overlay annotated
   masks (new objects get channels in an :class:`ObjectChannels` map), hand the frame's
   final probabilities back to the propagator, which memorises them on memory frames;
4. yields each frame as soon as it is final (:meth:`PropagationEngine.frames`), mapped to
   the original size (unpad, bilinear upsampling, argmax -> object ids). Everything else
   consumes that one generator: :meth:`PropagationEngine.propagate` collects [T, H, W]
   arrays, ``twoshot infer`` writes each frame as it comes (so long videos are streamed),
   the pseudo-label bank writes its videos, progress bars count frames.

Speed (``InferenceConfig``): by default the engine runs the model's fast inference copy
(STCN: folded BatchNorm, per-frame work shared by the objects, channels-last (NHWC)
convolutions; Cutie: the exact path, see ``VOSModel.channels_last_when_fast``); ``exact``
keeps the reference implementations' layout and operations, bit for bit. ``amp`` (autocast
on CUDA to float16 or, with ``amp_dtype``, bfloat16; on a CPU to bfloat16 only) and ``compile``
(``torch.compile`` of the model's heavy calls, falling back to eager execution where
compiling is unavailable or fails) are opt-in; see docs/performance.md.

With ``exact`` and STCN, masks equal those of STCN's ``InferenceCore`` (DAVIS) /
``inference_core_yv`` (YouTube-VOS) for the same weights and settings; see
``tests/test_inference.py``.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twoshot.config import InferenceConfig
from twoshot.config_checks import check_inference_settings
from twoshot.devices import amp_dtype, cpu_bf16_flags
from twoshot.errors import UserError
from twoshot.inference.frames import (
    EngineStats,
    FrameMaker,
    FrameOutput,
    ObjectChannels,
    PartialFrame,
    PropagationResult,
    check_masks,
    given_ahead,
    overlay_annotation,
    present_objects,
)
from twoshot.inference.geometry import Geometry
from twoshot.inference.key_cache import FramesOnDemand, FrameSource, KeyCache
from twoshot.inference.schedule import Run, forward_runs, fused_runs, nearest_runs
from twoshot.model.interface import VOSModel, Wrap, inference_memory_format

DIRECTIONS: tuple[str, ...] = ("forward", "bidirectional")


def _check_precision(config: InferenceConfig, device: torch.device, model: VOSModel) -> None:
    """UserError for ``exact`` with bfloat16 on a CPU where ``model``'s reference implementation
    computes in fp32 there (STCN's, Cutie's); a warning when bfloat16 on this CPU would be
    emulated (slower than fp32)."""
    if not (config.amp and device.type == "cpu" and config.amp_dtype == "bfloat16"):
        return
    if config.exact and not model.reference_autocasts_on_cpu:
        raise UserError(
            "inference.exact with inference.amp (bfloat16) on a CPU: the reference implementations "
            "compute in fp32 on a CPU; drop one of the two"
        )
    if not cpu_bf16_flags():
        warnings.warn(
            "inference.amp with bfloat16 on a CPU without AVX-512 BF16 or AMX (no avx512_bf16 / "
            "amx_bf16 in /proc/cpuinfo): bfloat16 is emulated there and usually slower than fp32",
            stacklevel=3,
        )


class Propagation(Iterator[FrameOutput]):
    """The frames of one video's propagation, each yielded once, as soon as it is final.

    Order: in the ``bidirectional`` direction the labeled frames first; then each run's frames as it
    reaches them; frames no run reaches (e.g. before the first annotation) last. Attributes
    known before iterating: ``object_ids`` (the video's, ascending), ``num_frames``, ``size``
    (H, W); ``stats`` is complete once the iteration is over.
    """

    def __init__(
        self,
        frames: Iterator[FrameOutput],
        object_ids: list[int],
        num_frames: int,
        size: tuple[int, int],
        stats: EngineStats,
    ) -> None:
        self._frames = frames
        self.object_ids = object_ids
        self.num_frames = num_frames
        self.size = size
        self.stats = stats

    def __iter__(self) -> Propagation:
        return self

    def __next__(self) -> FrameOutput:
        return next(self._frames)


class PropagationEngine:
    """Runs a model's inference (any :class:`~twoshot.model.interface.VOSModel`) under
    ``config`` on ``device``.

    The model is moved to ``device`` and put in eval mode, its convolution weights in the
    layout of :func:`~twoshot.model.interface.inference_memory_format` (``config.channels_last``;
    when unset, channels-last unless ``config.exact`` or the model keeps the reference's layout
    on its fast path, as Cutie; in place, values unchanged: one layout per model at a time).
    :attr:`key_batch` frames are encoded per call; ``config.amp`` enables autocast to
    ``config.amp_dtype`` (float16 or bfloat16) on CUDA, to bfloat16 on a CPU (float16 runs fp32);
    ``config.compile`` runs the model's heavy calls through ``torch.compile`` (compiled on
    first use, per engine).
    """

    def __init__(
        self, model: VOSModel, config: InferenceConfig | None = None, device: torch.device | str | None = None
    ) -> None:
        self.config = config or InferenceConfig()
        amp_dtype(self.config.amp_dtype)  # refuse a bad value before any work
        check_inference_settings(self.config, model.kind)
        if device is None:
            from twoshot.devices import resolve_device

            device = resolve_device(self.config.device)
        self.device = torch.device(device)
        _check_precision(self.config, self.device, model)
        # The layout is set both ways: weights an earlier channels-last engine converted
        # would otherwise make every convolution here NHWC too.
        self.memory_format = inference_memory_format(self.config, model)
        # Module.to's stubs lack memory_format, which it takes at run time.
        self.model = model.to(self.device, memory_format=self.memory_format).eval()  # type: ignore[call-overload]
        wrap: Wrap = _compile_or_eager if self.config.compile else _eager
        if self.config.runtime != "torch":
            from twoshot.inference.onnx_runtime import RuntimeWrap

            if self.device.type != "cpu":
                raise UserError(
                    f"inference.runtime {self.config.runtime} runs on a CPU, not on {self.device}"
                )
            from twoshot.inference.onnx_cache import cache_folder

            graphs = self.config.onnx_graphs
            wrap = RuntimeWrap(
                self.config.runtime,
                cache=cache_folder(self.config.onnx_cache),
                graphs=None if graphs is None else Path(graphs).expanduser(),
            )
        self.propagator = self.model.propagator(self.config, wrap)

    @property
    def key_batch(self) -> int:
        """Frames per encoder call: ``config.key_batch``, or 8 on CUDA and 1 on a CPU."""
        if self.config.key_batch is not None:
            return self.config.key_batch
        return 8 if self.device.type == "cuda" else 1

    def frames(
        self,
        frames: FrameSource,
        masks_by_frame: Mapping[int, np.ndarray],
        *,
        direction: str = "forward",
        output_frames: Collection[int] | None = None,
        confidence: bool = False,
        probabilities: bool = False,
    ) -> Propagation:
        """Segment the annotated objects through one video, frame by frame.

        frames: T frames, uint8 [H, W, 3] each (an array [T, H, W, 3] or a lazy sequence,
            read about once per frame).
        masks_by_frame: {frame index: uint8 [H, W] object ids}. direction ``forward``: each
            object starts on the first frame whose mask shows it; later masks add objects
            (YouTube-VOS) or overwrite an object's pixels there. ``bidirectional``
            (two-shot pseudo labels): every given frame is a labeled frame showing all its
            objects; each other frame takes the propagation from its nearest labeled frame
            (DESIGN.md section 2; ``config.merge == "fused"``: frames between two labeled
            frames combine both, :func:`~twoshot.inference.schedule.fused_runs`), and labeled
            frames keep their masks.
            With ``config.flip`` / ``config.scales`` (test-time augmentation) the whole plan
            runs once per variant (mirrored frames, size x factor) and each frame's
            probabilities, brought back to the original frame, are averaged before the argmax.
        output_frames: frames whose result is needed (None = all); others may be left out.
        confidence / probabilities: also fill those fields of each :class:`FrameOutput`.
        The arguments are checked now (UserError / ValueError); the work happens while the
        returned :class:`Propagation` is iterated, under ``torch.inference_mode``. Every
        frame of the video is yielded exactly once (frames not in ``output_frames`` may come
        as background with source None).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        num_frames = len(frames)
        if num_frames == 0:
            raise UserError("empty video: no frames")
        first = np.asarray(frames[0])
        if first.ndim != 3 or first.shape[2] != 3:
            raise UserError(f"frames must be RGB [H, W, 3], got shape {first.shape}")
        height, width = first.shape[:2]
        masks = check_masks(masks_by_frame, num_frames, (height, width))
        object_ids = sorted({int(o) for m in masks.values() for o in np.unique(m) if o != 0})
        cfg = self.config
        wanted = None if output_frames is None else {int(f) for f in output_frames}
        plan = (
            forward_runs if direction == "forward" else fused_runs if cfg.merge == "fused" else nearest_runs
        )
        every_frame = self.propagator.segments_every_frame
        runs = plan(num_frames, list(masks), wanted, cfg.mem_every, cfg.include_last, every_frame)
        stats = EngineStats(runs=len(runs))
        preparation = self.propagator.preparation
        geometry = Geometry.for_frames(height, width, cfg.size, preparation.upscale, preparation.pad_to)
        output = FrameMaker(geometry, object_ids, confidence, probabilities)
        variants = [
            (scale, flip) for scale in cfg.scales for flip in ((False, True) if cfg.flip else (False,))
        ]
        if variants == [(1.0, False)]:
            generator = self._generate(frames, masks, direction, runs, output, stats)
        else:
            generator = self._augmented(frames, masks, direction, runs, output, variants, stats)
        return Propagation(generator, object_ids, num_frames, (height, width), stats)

    def propagate(
        self,
        frames: FrameSource,
        masks_by_frame: Mapping[int, np.ndarray],
        *,
        direction: str = "forward",
        output_frames: Collection[int] | None = None,
        confidence: bool = False,
        probabilities: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PropagationResult:
        """All frames of :meth:`frames` collected into [T, H, W] arrays (see PropagationResult).

        progress: called with a frame index each time a frame is final.
        """
        propagation = self.frames(
            frames,
            masks_by_frame,
            direction=direction,
            output_frames=output_frames,
            confidence=confidence,
            probabilities=probabilities,
        )
        num_frames, (height, width) = propagation.num_frames, propagation.size
        object_ids = propagation.object_ids
        result = PropagationResult(
            np.zeros((num_frames, height, width), np.uint8),
            object_ids,
            [None] * num_frames,
            np.zeros((num_frames, height, width), np.uint8) if confidence else None,
            np.zeros((num_frames, len(object_ids) + 1, height, width), np.float32) if probabilities else None,
            propagation.stats,
        )
        position = {obj: channel for channel, obj in enumerate(object_ids, start=1)}
        for out in propagation:
            result.masks[out.frame] = out.labels
            result.sources[out.frame] = out.source
            if result.confidence is not None:
                result.confidence[out.frame] = out.confidence
            if result.probabilities is not None:
                assert out.probabilities is not None
                channels = [0] + [position[o] for o in out.object_ids]
                result.probabilities[out.frame, channels] = out.probabilities.cpu().numpy()
            if progress is not None:
                progress(out.frame)
        return result

    def _augmented(
        self,
        frames: FrameSource,
        masks: dict[int, np.ndarray],
        direction: str,
        runs: list[Run],
        output: FrameMaker,
        variants: list[tuple[float, bool]],
        stats: EngineStats,
    ) -> Iterator[FrameOutput]:
        """Test-time augmentation: the plan once per (scale, flip) variant, each frame's
        probabilities averaged at the original size (mirrored ones mirrored back) before the
        argmax. Every variant yields the frames in the same order (same plan), so they are
        advanced together and each frame is final once every variant has given it."""
        height, width = output.geometry.original
        base = self.config.size if self.config.size != -1 else min(height, width)
        parts: list[tuple[bool, EngineStats, Iterator[FrameOutput]]] = []
        for scale, flip in variants:
            # A factor other than 1 asks for that size even from models that never upscale.
            geometry = (
                output.geometry
                if scale == 1.0
                else Geometry.for_frames(
                    height, width, max(16, round(base * scale)), True, self.propagator.preparation.pad_to
                )
            )
            maker = FrameMaker(geometry, output.object_ids, confidence=False, probabilities=True)
            source: FrameSource = _Mirrored(frames) if flip else frames
            given = {f: np.ascontiguousarray(m[:, ::-1]) for f, m in masks.items()} if flip else masks
            part = EngineStats()
            parts.append((flip, part, self._generate(source, given, direction, runs, maker, part)))
        for outs in zip(*(generator for _, _, generator in parts)):
            with torch.inference_mode():
                total: torch.Tensor | None = None
                for (flip, _, _), out in zip(parts, outs):
                    assert out.frame == outs[0].frame and out.probabilities is not None
                    prob = output.video_channels(out.probabilities, out.object_ids)
                    prob = prob.flip(-1) if flip else prob
                    total = prob if total is None else total + prob
                assert total is not None
                result = output.final(outs[0].frame, total / len(outs), output.object_ids, outs[0].source)
            yield result
        for _, part, generator in parts:
            # zip stopped at the first variant's end: let the others finish (and count) too.
            assert next(generator, None) is None
            for name in ("key_encodes", "encoder_calls", "value_encodes", "segmented", "seconds"):
                setattr(stats, name, getattr(stats, name) + getattr(part, name))
            stats.peak_memory_frames = max(stats.peak_memory_frames, part.peak_memory_frames)
            stats.peak_cached_frames += part.peak_cached_frames  # the variants' caches coexist
        stats.runs = len(runs) * len(variants)

    def _generate(
        self,
        frames: FrameSource,
        masks: dict[int, np.ndarray],
        direction: str,
        runs: list[Run],
        output: FrameMaker,
        stats: EngineStats,
    ) -> Iterator[FrameOutput]:
        """The body of :meth:`frames`: labeled frames, every run's frames, then the uncovered.

        A frame several runs emit (``fused`` merge) is held, in the video's channel order at
        the network's resolution, until its last run has given it, then combined with the
        runs' weights and yielded once.
        """
        start = time.perf_counter()
        remaining = Counter(step.frame for run in runs for step in run.steps if step.emit)
        pending: dict[int, PartialFrame] = {}

        def emit(run: Run, frame: int, prob: torch.Tensor, ids: list[int], source: int) -> FrameOutput | None:
            if remaining[frame] == 1 and frame not in pending:
                return output.predicted(frame, prob, ids, source)
            weight = run.weights[frame]
            part = output.video_channels(prob, ids) * weight
            held = pending.get(frame)
            if held is None:
                held = pending[frame] = PartialFrame(part, weight, source, weight)
            else:
                held.total += part
                held.weight += weight
                if weight >= held.best:  # the nearer side names the source; ties to the later run
                    held.source, held.best = source, weight
            remaining[frame] -= 1
            if remaining[frame] > 0:
                return None
            del pending[frame]
            return output.predicted(frame, held.total / held.weight, output.object_ids, held.source)

        covered: set[int] = set()
        if direction == "bidirectional":
            for frame, labels in masks.items():
                covered.add(frame)
                yield output.given(frame, labels, source=frame)
        cache = KeyCache(
            self.propagator.encode_frames,
            frames,
            output.geometry,
            self.device,
            self.key_batch,
            memory_format=self.memory_format,
            normalize_first=self.propagator.preparation.normalize_first,
        )
        for run in runs:
            cache.plan(run.frames)
        self.propagator.start_video(len(frames))
        for run in runs:
            for out in self._execute(run, masks, cache, output.geometry, emit, stats):
                covered.add(out.frame)
                yield out
        for frame in range(len(frames)):
            if frame not in covered:
                yield output.background(frame)
        stats.key_encodes = sum(cache.encode_count.values())
        stats.encoder_calls = cache.encoder_calls
        stats.peak_cached_frames = cache.peak_cached
        stats.seconds = time.perf_counter() - start

    def _execute(
        self,
        run: Run,
        masks: Mapping[int, np.ndarray],
        cache: KeyCache,
        geometry: Geometry,
        emit: Callable[[Run, int, torch.Tensor, list[int], int], FrameOutput | None],
        stats: EngineStats,
    ) -> Iterator[FrameOutput]:
        """Carry out one run's steps with a fresh memory, yielding the frames that ``emit``
        makes final from the run's emitted probabilities ([1+K, Hp, Wp] of the run's ids)."""
        propagator = self.propagator
        memory = propagator.new_memory()
        channels = ObjectChannels()
        frames = run.frames
        source = run.source  # the latest annotated frame processed
        run_ids = sorted({int(o) for frame in run.annotated for o in np.unique(masks[frame]) if o})
        for index, step in enumerate(run.steps):
            # Inference mode per step, not across the yield: the consumer's code between
            # frames must not run (and create tensors) in inference mode.
            with torch.inference_mode():
                cached = cache.acquire(step.frame, frames[index + 1 :])
                present = present_objects(masks[step.frame]) if step.annotation else []
                prob: torch.Tensor | None = None  # [1, 1+K, Hp, Wp], background first
                new: list[int] = []
                # An annotation that shows every enabled object replaces the whole prediction.
                if step.predict and not (step.annotation and all(o in present for o in channels.ids)):
                    prob = propagator.segment(memory, cached.image, cached.features)
                    stats.segmented += 1
                if step.annotation:
                    source = step.frame
                    prob, new = overlay_annotation(
                        prob, channels, masks[step.frame], present, run_ids, geometry, self.device
                    )
                    if new:
                        memory.add_objects(len(new))
                assert prob is not None
                propagator.memorize(
                    memory, cached.image, cached.features, prob, step.memory, pinned=step.annotation
                )
                if step.annotation and new and propagator.reads_ahead:  # SAM 2: later given frames now
                    later = [(i, s.frame) for i, s in enumerate(run.steps) if i > index and s.annotation]
                    given_ahead(propagator, memory, later, new, channels.ids, masks, cache, geometry)
                if step.memory is not None:
                    stats.value_encodes += 1
                result = emit(run, step.frame, prob[0], channels.ids, source) if step.emit else None
                cache.release(step.frame)
            if result is not None:
                yield result
        stats.peak_memory_frames = max(stats.peak_memory_frames, memory.peak_frames)


class _Mirrored(FramesOnDemand):
    """The frames of ``frames`` mirrored left-right (test-time augmentation)."""

    def __init__(self, frames: FrameSource) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def frame(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self.frames[index])[:, ::-1])


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
        warnings.warn(
            f"inference compile=True: running {self.name} without torch.compile ({why})",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, *args: object) -> object:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - compilation happens on the first calls
                # A real error in the computation itself is raised again by the eager call.
                self._fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return self.eager(*args)


def _compile_or_eager(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The engine's :data:`~twoshot.model.interface.Wrap` with ``compile``: fn through
    ``torch.compile``, falling back to ``fn`` (see :class:`_CompiledOrEager`)."""
    return _CompiledOrEager(fn, name)


def _eager(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The engine's :data:`~twoshot.model.interface.Wrap` without ``compile``: ``fn`` itself."""
    return fn
