"""What the propagation engine hands out and its per-frame bookkeeping: the object-id <->
channel map, frames at the original size (:class:`FrameOutput`), a video's result and work
statistics, and the overlay of annotated masks on propagated probabilities."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from twoshot.errors import UserError
from twoshot.inference.geometry import Geometry, labels_from_prob, prepare_masks, to_original
from twoshot.model.aggregate import aggregate

if TYPE_CHECKING:
    from twoshot.inference.key_cache import KeyCache
    from twoshot.model.interface import Propagator, RunMemory


@dataclass
class EngineStats:
    """Work done for one video (for tests, benchmarks and summaries).

    key_encodes: frames through the frame encoder (each frame at most once when planned);
    encoder_calls: batched encoder calls; value_encodes: frames memorised (one mask-encoder
    call per memory frame, all objects batched); segmented: frames segmented from memory;
    peak_memory_frames: largest memory of any run; peak_cached_frames: most frame features
    held at once; runs: propagation runs; seconds: wall time.
    """

    key_encodes: int = 0
    encoder_calls: int = 0
    value_encodes: int = 0
    segmented: int = 0
    peak_memory_frames: int = 0
    peak_cached_frames: int = 0
    runs: int = 0
    seconds: float = 0.0


class ObjectChannels:
    """Object ids <-> channels of a run's probabilities: channel 0 is the background, channel
    ``c`` (1-based) holds the c-th object enabled."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._channels: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, obj: object) -> bool:
        return obj in self._channels

    def channel(self, obj: int) -> int:
        """The channel (1-based) of object ``obj``; KeyError if it is not enabled."""
        return self._channels[obj]

    def add(self, objects: Collection[int]) -> list[int]:
        """Enable the objects of ``objects`` not enabled yet, in the given order; returns them."""
        new = [int(o) for o in objects if o not in self._channels]
        for obj in new:
            self.ids.append(obj)
            self._channels[obj] = len(self.ids)
        return new


@dataclass
class FrameOutput:
    """One frame of a propagation, final, at the original size.

    frame: its index; labels: uint8 [H, W] object ids (0 = background); source: the
    annotated frame whose run gave it (None: no run reached it, all background);
    object_ids: the ids of channels 1..K of ``probabilities``; confidence: uint8 [H, W],
    max probability x 255 (when asked for); probabilities: float32 [1+K, H, W] on the
    engine's device, background first (when asked for).
    """

    frame: int
    labels: np.ndarray
    source: int | None
    object_ids: list[int]
    confidence: np.ndarray | None = None
    probabilities: torch.Tensor | None = None


@dataclass
class PropagationResult:
    """The outputs for one video, at the original frame size.

    masks: uint8 [T, H, W] object ids (0 = background; frames not covered are all 0).
    object_ids: the video's object ids, ascending (the channel order of ``probabilities``).
    sources: per frame, the annotated frame whose propagation gave it (None: not covered).
    confidence: uint8 [T, H, W], max probability x 255 (when asked for).
    probabilities: float32 [T, K+1, H, W], background first then ``object_ids`` (when asked).
    """

    masks: np.ndarray
    object_ids: list[int]
    sources: list[int | None]
    confidence: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    stats: EngineStats = field(default_factory=EngineStats)


def present_objects(labels: np.ndarray) -> list[int]:
    """The object ids shown in labels [H, W], ascending."""
    return [int(o) for o in np.unique(labels) if o != 0]


def overlay_annotation(
    prob: torch.Tensor | None,
    channels: ObjectChannels,
    labels: np.ndarray,
    present: list[int],
    run_ids: list[int],
    geometry: Geometry,
    device: torch.device,
) -> tuple[torch.Tensor, list[int]]:
    """Put an annotated frame's masks over the propagated probabilities, as STCN's interact.

    prob: [1, 1+K, Hp, Wp] for the enabled objects of ``channels`` (None when nothing was
    segmented: no object yet, or the annotation shows them all); present: the ids in
    ``labels``; run_ids: every object the run will see, ascending. The annotated objects'
    pixels are cleared in every channel, their channels set to their masks, and the object
    channels soft-aggregated again. Like STCN's YouTube-VOS code this aggregation runs over
    all of ``run_ids`` in id order, objects not enabled yet as zero channels (they shift the
    other probabilities by ~1e-7, which keeps results bit-identical to STCN's).
    Returns (prob [1, 1+K', Hp, Wp] in channel order, the ids enabled by this frame).
    """
    onehot = prepare_masks(labels, present, geometry, device)  # [A, Hp, Wp]
    position = {obj: i for i, obj in enumerate(run_ids)}
    objects = torch.zeros((len(run_ids), *onehot.shape[-2:]), device=device)
    if prob is not None:
        for obj in channels.ids:
            objects[position[obj]] = prob[0, channels.channel(obj)].float()
    objects[:, onehot.sum(0) > 0.5] = 0
    for channel, obj in enumerate(present):
        objects[position[obj]] = onehot[channel]
    new = channels.add(present)
    aggregated = aggregate(objects[None], dim=1)
    order = [0] + [1 + position[obj] for obj in channels.ids]
    if order != list(range(len(run_ids) + 1)):
        aggregated = aggregated[:, order]
    return aggregated, new


def check_masks(
    masks_by_frame: Mapping[int, np.ndarray], num_frames: int, size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Validated {frame: uint8 [H, W]} without masks that show no object, sorted by frame."""
    masks: dict[int, np.ndarray] = {}
    for frame, labels in sorted(masks_by_frame.items()):
        frame = int(frame)
        labels = np.asarray(labels)
        if not 0 <= frame < num_frames:
            raise UserError(f"mask given for frame {frame}, but the video has {num_frames} frames")
        if labels.ndim != 2:
            raise UserError(
                f"mask of frame {frame} must be a 2-D array of object ids, got shape "
                f"{labels.shape} (an RGB mask?)"
            )
        if labels.shape != size:
            raise UserError(
                f"mask of frame {frame} is {labels.shape[1]}x{labels.shape[0]} but "
                f"the frame is {size[1]}x{size[0]}"
            )
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise UserError(f"mask of frame {frame} has ids outside 0..255")
        if labels.any():
            masks[frame] = labels.astype(np.uint8, copy=False)
    if not masks:
        raise UserError("no object in the given masks (every mask is all background)")
    return masks


class FrameMaker:
    """Makes :class:`FrameOutput` s at the original size from network-resolution probabilities,
    given masks, or nothing (uncovered frames)."""

    def __init__(
        self, geometry: Geometry, object_ids: list[int], confidence: bool, probabilities: bool
    ) -> None:
        self.geometry = geometry
        self.object_ids = object_ids
        self.want_confidence = confidence
        self.want_probabilities = probabilities

    def predicted(self, frame: int, prob: torch.Tensor, ids: list[int], source: int) -> FrameOutput:
        """Frame ``frame`` from its probabilities [1+K, Hp, Wp] of objects ``ids``."""
        return self.final(frame, to_original(prob, self.geometry), ids, source)

    def video_channels(self, prob: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """prob [1+k, h, w] of objects ``ids`` -> float32 [1+K, h, w] in the video's channel
        order (background, then :attr:`object_ids`); objects not in ``ids`` get 0."""
        if ids == self.object_ids:
            return prob.float()
        out = torch.zeros((len(self.object_ids) + 1, *prob.shape[1:]), device=prob.device)
        position = {obj: channel for channel, obj in enumerate(self.object_ids, start=1)}
        out[[0] + [position[o] for o in ids]] = prob.float()
        return out

    def final(self, frame: int, full: torch.Tensor, ids: list[int], source: int | None) -> FrameOutput:
        """Frame ``frame`` from its probabilities [1+K, H, W] at the original size."""
        labels, top = labels_from_prob(full, ids)
        confidence = None
        if self.want_confidence:
            confidence = (top * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return FrameOutput(
            frame,
            labels.cpu().numpy(),
            source,
            list(ids),
            confidence,
            full if self.want_probabilities else None,
        )

    def given(self, frame: int, labels: np.ndarray, source: int | None) -> FrameOutput:
        """A given mask as the result of ``frame`` (certain: confidence 255, one-hot)."""
        probabilities = None
        if self.want_probabilities:
            ids = torch.as_tensor(np.ascontiguousarray(labels)).long()
            channel_of = torch.zeros(256, dtype=torch.long)
            for channel, obj in enumerate(self.object_ids, start=1):
                channel_of[obj] = channel
            probabilities = torch.nn.functional.one_hot(channel_of[ids], len(self.object_ids) + 1)
            probabilities = probabilities.permute(2, 0, 1).float()
        confidence = np.full(labels.shape, 255, np.uint8) if self.want_confidence else None
        return FrameOutput(frame, labels, source, list(self.object_ids), confidence, probabilities)

    def background(self, frame: int) -> FrameOutput:
        """A frame no run reached: background with certainty."""
        return self.given(frame, np.zeros(self.geometry.original, np.uint8), source=None)


@dataclass
class PartialFrame:
    """A frame's combination in progress: the weighted sum [1+K, Hp, Wp] so far, the weights
    summed, and the source of the heaviest part (its weight ``best``)."""

    total: torch.Tensor
    weight: float
    source: int
    best: float


def given_ahead(
    propagator: Propagator,
    memory: RunMemory,
    later: list[tuple[int, int]],
    new: list[int],
    ids: list[int],
    masks: Mapping[int, np.ndarray],
    cache: KeyCache,
    geometry: Geometry,
) -> None:
    """Hand a propagator that ``reads_ahead`` the later annotated frames of its run for the
    objects ``new`` just enabled: ``later`` (run step, frame) pairs; ids: every enabled object
    in channel order; each frame's features are read from ``cache`` (one extra planned use)."""
    for step, frame in later:
        onehot = prepare_masks(masks[frame], ids, geometry, cache.device) > 0.5
        onehot[[i for i, obj in enumerate(ids) if obj not in new]] = False
        if not bool(onehot.any()):
            continue
        cache.plan([frame])  # read now, and again when the run reaches it
        propagator.condition_ahead(memory, step, cache.acquire(frame).features, onehot)
        cache.release(frame)
