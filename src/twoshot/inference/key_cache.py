"""Per-video cache of frame features: each frame is encoded once, in batches.

The frame encoder (a ResNet-50 up to layer3 in STCN and Cutie-base) is the most expensive
part of a frame's processing, and its output depends on the frame only: every object, and
every propagation direction of a video, can share it. The cache is told in advance how many times each frame
will be needed (:meth:`KeyCache.plan`), encodes frames in batches in the order a direction
will ask for them, and frees a frame after its last use, so memory stays bounded by about
``batch_size`` frames plus the frames waiting for a second direction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from twoshot.inference.geometry import Geometry, prepare_frames
from twoshot.model.interface import FrameFeatures

FrameSource = Sequence[np.ndarray] | np.ndarray  # frames[t] -> uint8 [H, W, 3]


class FramesOnDemand(Sequence[np.ndarray]):
    """A :data:`FrameSource` that makes each frame when it is asked for (read from disk,
    rendered...), so a long video is never held whole. Subclasses give ``__len__`` and
    :meth:`frame`; indexing with an int or a slice (a list of frames) is done here.
    """

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0 <= index < len(self)) as uint8 [H, W, 3]."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self.frame(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} of a {len(self)}-frame video")
        return self.frame(index % len(self))


@dataclass
class CachedFrame:
    """A frame's network input image [1, 3, Hp, Wp] and its features (batch of one)."""

    image: torch.Tensor
    features: FrameFeatures


class KeyCache:
    """Features of one video's frames, encoded in batches and freed after their last use.

    encode: the model's frame encoder, images [B, 3, Hp, Wp] -> features of B frames
    (``Propagator.encode_frames``); frames: ``frames[t]`` gives uint8 [H, W, 3];
    geometry: the video's sizes; batch_size: frames per ``encode`` call;
    memory_format: layout of the network input (``torch.channels_last`` for the NHWC fast path);
    normalize_first: the model's order of preparation (:func:`~twoshot.inference.geometry.prepare_frames`).
    """

    def __init__(
        self,
        encode: Callable[[torch.Tensor], FrameFeatures],
        frames: FrameSource,
        geometry: Geometry,
        device: torch.device,
        batch_size: int = 8,
        memory_format: torch.memory_format = torch.contiguous_format,
        normalize_first: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.encode = encode
        self.normalize_first = normalize_first
        self.memory_format = memory_format
        self.frames = frames
        self.geometry = geometry
        self.device = device
        self.batch_size = batch_size
        self.uses: Counter[int] = Counter()
        self.cached: dict[int, CachedFrame] = {}
        self.encode_count: Counter[int] = Counter()  # frame -> times encoded (1 when planned right)
        self.encoder_calls = 0
        self.peak_cached = 0

    def plan(self, frames: Iterable[int]) -> None:
        """Announce one future use of each frame in ``frames`` (a frame may repeat)."""
        self.uses.update(frames)

    def acquire(self, frame: int, upcoming: Sequence[int] = ()) -> CachedFrame:
        """The features of ``frame``, encoding it now if needed together with the next frames
        of ``upcoming`` (the caller's future requests, in order) that are not cached yet."""
        if frame not in self.cached:
            batch = [frame]
            for other in upcoming:
                if len(batch) >= self.batch_size:
                    break
                if other not in self.cached and other not in batch and self.uses[other] > 0:
                    batch.append(other)
            self._encode(batch)
        return self.cached[frame]

    def release(self, frame: int) -> None:
        """One use of ``frame`` is over; its features are freed after the last planned use."""
        self.uses[frame] -= 1
        if self.uses[frame] <= 0:
            self.cached.pop(frame, None)
            del self.uses[frame]

    def _encode(self, batch: list[int]) -> None:
        images = prepare_frames(
            np.stack([np.asarray(self.frames[t]) for t in batch]),
            self.geometry,
            self.device,
            self.normalize_first,
        )
        if self.memory_format != torch.contiguous_format:
            images = images.contiguous(memory_format=self.memory_format)
        features = self.encode(images)
        self.encoder_calls += 1
        for i, t in enumerate(batch):
            image, feats = images[i : i + 1], features.index(i)
            if self.uses[t] > 1 and len(batch) > 1:
                # A frame waiting for another direction must not keep its batch-mates' large
                # feature maps alive: give it its own copy.
                image, feats = image.clone(), feats.clone()
            self.cached[t] = CachedFrame(image, feats)
            self.encode_count[t] += 1
        self.peak_cached = max(self.peak_cached, len(self.cached))
