"""The training batch: one typed structure from the clip datasets to the loss.

A :class:`ClipBatch` holds B clips of T frames at S x S pixels with K object slots. The clip
datasets (:mod:`twoshot.data.vos_clips`, :mod:`twoshot.data.static_clips`) return a batch
of one clip (B = 1, built with :meth:`ClipBatch.single`); :func:`collate_clips` concatenates
those into the batch the trainer consumes. K is the same for every clip of a dataset (its
``num_objects``): a clip with fewer objects pads its slots, which ``selector`` marks 0.

Phases substitute targets with :meth:`ClipBatch.replace` (``batch.replace(cls_gt=...)``);
the batch itself is immutable, so a regime never changes what another hook sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Fields that only VOSClipDataset fills (the way back onto the original frames, for phase 2's
# write-back); None in clips from static images or from a user's dataset.
OPTIONAL_FIELDS = ("sample_seed", "geometry", "crop_box", "frame_size", "object_ids")


@dataclass(frozen=True)
class ClipBatch:
    """B training clips (T frames, S x S pixels, K object slots); see the module doc."""

    rgb: torch.Tensor
    """float32 [B, T, 3, S, S]: the frames, ImageNet-normalised."""
    first_masks: torch.Tensor
    """float32 [B, K, S, S]: frame 0's mask (0/1) of each object slot; zeros in empty slots."""
    cls_gt: torch.Tensor
    """int64 [B, T, S, S]: per-pixel targets: 0 background, k the object of slot k (1..K),
    -1 no label (unlabeled frames; ignored by the loss)."""
    selector: torch.Tensor
    """float32 [B, K]: 1 for slots that hold an object, 0 for padding (present slots first)."""
    labeled: torch.Tensor
    """bool [B, T]: which frames carry ground truth (frame 0 always does)."""
    names: tuple[str, ...]
    """B names: the clip's video, or its static image's path relative to the image root."""
    frames: torch.Tensor
    """int64 [B, T]: the video's frame index of each clip frame (0 for static images)."""
    sample_seed: torch.Tensor | None = None
    """int64 [B]: each sample's own seed for randomness in the loss (Cutie's point sampling);
    set by the trainer's batch stream (:mod:`twoshot.train.loader`)."""
    geometry: torch.Tensor | None = None
    """float64 [B, T, 3, 3]: each frame's map from original-frame pixels to crop pixels."""
    crop_box: torch.Tensor | None = None
    """int64 [B, 4]: each clip's crop in its original frames (top, left, height, width)."""
    frame_size: torch.Tensor | None = None
    """int64 [B, 2]: the original frames' (height, width)."""
    object_ids: torch.Tensor | None = None
    """int64 [B, K]: the label-map id of each slot's object (-1: empty slot)."""

    def __post_init__(self) -> None:
        # Shapes that disagree would fail later, far from the dataset that made them.
        if self.rgb.dim() != 5 or self.selector.dim() != 2:
            raise ValueError(
                f"ClipBatch: rgb must be [B, T, 3, S, S] and selector [B, K], got "
                f"{tuple(self.rgb.shape)} and {tuple(self.selector.shape)}"
            )
        batch, steps = self.rgb.shape[:2]
        slots = self.selector.shape[1]
        expected = {
            "cls_gt": (batch, steps, *self.rgb.shape[3:]),
            "first_masks": (batch, slots, *self.rgb.shape[3:]),
            "labeled": (batch, steps),
            "frames": (batch, steps),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"ClipBatch.{name} is {tuple(getattr(self, name).shape)}, expected {shape}")
        if len(self.names) != batch:
            raise ValueError(f"ClipBatch: {batch} clips but {len(self.names)} names")

    @classmethod
    def single(
        cls,
        *,
        rgb: torch.Tensor,
        first_masks: torch.Tensor,
        cls_gt: torch.Tensor,
        selector: torch.Tensor,
        labeled: torch.Tensor,
        name: str,
        frames: Sequence[int],
        **optional: torch.Tensor,
    ) -> ClipBatch:
        """A batch of one clip from its tensors without the batch dimension (rgb [T,3,S,S],
        first_masks [K,S,S], cls_gt [T,S,S], selector [K], labeled [T], and any of
        :data:`OPTIONAL_FIELDS`); ``frames``: T frame indices."""
        unknown = set(optional) - set(OPTIONAL_FIELDS)
        if unknown:
            raise TypeError(f"ClipBatch has no field {sorted(unknown)[0]!r}")
        return cls(
            rgb=rgb[None],
            first_masks=first_masks[None],
            cls_gt=cls_gt[None],
            selector=selector[None],
            labeled=labeled[None],
            names=(name,),
            frames=torch.tensor([[int(f) for f in frames]], dtype=torch.int64),
            **{key: value[None] for key, value in optional.items()},
        )

    @property
    def size(self) -> int:
        """B, the number of clips."""
        return int(self.rgb.shape[0])

    @property
    def num_objects(self) -> int:
        """K, the object slots per clip."""
        return int(self.selector.shape[1])

    def replace(self, **changes: Any) -> ClipBatch:
        """A copy with the given fields changed (e.g. ``cls_gt=targets``); shapes re-checked."""
        return dataclasses.replace(self, **changes)

    def map_tensors(self, apply: Callable[[torch.Tensor], torch.Tensor]) -> ClipBatch:
        """A copy with ``apply(tensor)`` applied to every tensor field (names kept)."""
        changes: dict[str, Any] = {
            f.name: apply(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return self.replace(**changes)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> ClipBatch:
        """The batch on ``device`` (asynchronous copies from pinned memory by default)."""
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ClipBatch:
        """The batch in page-locked memory (the DataLoader calls this with ``pin_memory``)."""
        return self.map_tensors(lambda t: t.pin_memory())


def collate_clips(samples: Sequence[ClipBatch]) -> ClipBatch:
    """One batch from several (the DataLoader's ``collate_fn``): tensors concatenated along the
    batch dimension in order, names joined. Raises TypeError for an item that is not a
    ClipBatch and ValueError when the items' K or optional fields differ."""
    if not samples:
        raise ValueError("collate_clips needs at least one sample")
    for sample in samples:
        if not isinstance(sample, ClipBatch):
            raise TypeError(
                "a training dataset must return ClipBatch items (twoshot.data.batch), "
                f"got {type(sample).__name__}"
            )
    changes: dict[str, Any] = {"names": tuple(name for s in samples for name in s.names)}
    for item in dataclasses.fields(ClipBatch):
        if item.name == "names":
            continue
        values = [getattr(s, item.name) for s in samples]
        present = [v is not None for v in values]
        if not all(present):
            if any(present):
                raise ValueError(f"ClipBatch.{item.name} is set in some samples of a batch but not all")
            changes[item.name] = None
            continue
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"samples of one batch differ in ClipBatch.{item.name}: shapes {sorted(shapes)}")
        changes[item.name] = torch.cat(values, dim=0)
    return dataclasses.replace(samples[0], **changes)
