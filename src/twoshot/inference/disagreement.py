"""Disagreement between two propagations of each frame: the score of ``--strategy disagreement``.

With labeled frames chosen so far, every other frame is reached by two independent
propagations, each starting from one chosen frame with only that frame (and what it
predicts) in memory, as each direction of the pseudo-label bank:

- between two chosen frames A < t < B: forward from A and backward from B, the two runs
  whose results the bank's ``nearest`` rule chooses between (and ``fused`` averages);
- before the first or after the last chosen frame: from the two nearest chosen frames on
  that side, both running towards t (the farther one passes the nearer one without using
  its label);
- with a single chosen frame there is no second run: its propagation is compared with the
  chosen mask copied unchanged (how far the object has moved or changed since the labeled
  frame, as the model sees it).

The score of a frame is the **mean total-variation distance** between the two probability
maps: per pixel ``0.5 * sum_c |p_c - q_c|`` over background and objects, averaged over the
H x W pixels. It is 0 where both agree, 1 where they are certain of different classes. It
was preferred to 1 - IoU of the argmax masks because it needs no threshold, counts soft
disagreement (two hesitant runs agree in part), covers every object at once, and stays
defined when both runs see no object (IoU is 0/0 there). Being a mean over pixels, it
grows with the objects' area: it compares frames of one video, where areas are similar.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from twoshot.inference.engine import PropagationEngine
from twoshot.inference.key_cache import FramesOnDemand, FrameSource

if TYPE_CHECKING:  # suggest imports this module
    from twoshot.inference.suggest import Uncertainty


def disagreement(p: torch.Tensor | np.ndarray, q: torch.Tensor | np.ndarray) -> float:
    """Mean total-variation distance of two probability maps p, q: float [C, H, W], the same
    C classes in the same order (each pixel's C values sum to 1). Returns a value in 0..1:
    the mean over the H x W pixels of ``0.5 * sum_c |p_c - q_c|``."""
    p, q = (
        x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, np.float32))
        for x in (p, q)
    )
    if p.shape != q.shape or p.ndim != 3:
        raise ValueError(f"expected two maps [C, H, W] of one shape, got {tuple(p.shape)}, {tuple(q.shape)}")
    return float(0.5 * (p - q).abs().sum(0).mean())


def comparison_sources(num_frames: int, chosen: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """For each frame not in ``chosen`` (frame indices of a ``num_frames``-frame video), the
    chosen frames whose propagations are compared there, nearest first (see the module
    docstring): two, or one when only one frame is chosen."""
    chosen = sorted(set(chosen))
    sources: dict[int, tuple[int, ...]] = {}
    for t in range(num_frames):
        if t in chosen or not chosen:
            continue
        left = [c for c in chosen if c < t]
        right = [c for c in chosen if c > t]
        if len(chosen) == 1:
            sources[t] = (chosen[0],)
        elif left and right:
            sources[t] = (left[-1], right[0])
        elif left:
            sources[t] = (left[-1], left[-2])
        else:
            sources[t] = (right[0], right[1])
    return sources


class _Ordered(FramesOnDemand):
    """The frames ``frames[order[0]], frames[order[1]], ...`` (a run in either direction)."""

    def __init__(self, frames: FrameSource, order: Sequence[int]) -> None:
        self.frames = frames
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def frame(self, index: int) -> np.ndarray:
        return np.asarray(self.frames[self.order[index]])


def _run(
    engine: PropagationEngine, frames: FrameSource, order: Sequence[int], mask: np.ndarray, ids: list[int]
) -> Iterator[tuple[int, torch.Tensor]]:
    """One propagation over frames ``order`` (processing order) from ``mask`` (uint8 [H, W]
    of frame ``order[0]``), its memory holding only that frame and its own predictions.
    Yields (frame, float32 [1+K, H, W] on the CPU) for the other frames, channels
    background then ``ids`` (objects the mask lacks get 0)."""
    propagation = engine.frames(_Ordered(frames, order), {0: mask}, direction="forward", probabilities=True)
    position = [0] + [1 + ids.index(obj) for obj in propagation.object_ids]
    for out in propagation:
        if out.frame == 0:
            continue
        assert out.probabilities is not None
        prob = out.probabilities.float().cpu()
        aligned = torch.zeros((len(ids) + 1, *prob.shape[1:]))
        aligned[position] = prob
        yield order[out.frame], aligned


def _one_hot(labels: np.ndarray, ids: list[int]) -> torch.Tensor:
    """uint8 [H, W] object ids -> float32 [1+K, H, W], background then ``ids``."""
    return torch.stack([torch.as_tensor(labels == obj) for obj in (0, *ids)]).float()


def propagation_disagreement(
    engine: PropagationEngine, predictions: MutableMapping[int, np.ndarray] | None = None
) -> Uncertainty:
    """The disagreement score of each frame under ``engine`` (see the module docstring), as a
    function ``(frames, {frame: uint8 [H, W] labels}) -> float [T]`` (0 on labeled frames).

    frames: T frames uint8 [H, W, 3]; labels: the chosen frames' masks (masks without an
    object start no run). predictions: filled, on each call, with every unlabeled frame's
    labels uint8 [H, W] from the mean of its two runs (the one run alone with one chosen
    frame): stand-in labels for frames whose annotation is not known yet (the annotation
    app). Each frame's first opinion is held (float16, CPU) until its second arrives.
    """

    def score(frames: FrameSource, masks: Mapping[int, np.ndarray]) -> np.ndarray:
        usable = {f: m for f, m in masks.items() if m.any()}
        ids = sorted({int(o) for m in usable.values() for o in np.unique(m) if o})
        pairs = comparison_sources(len(frames), list(usable))
        reach: dict[tuple[int, int], int] = {}  # (source, direction) -> farthest frame
        for t, sources in pairs.items():
            for s in sources:
                d = 1 if t > s else -1
                far = reach.get((s, d), t)
                reach[(s, d)] = max(far, t) if d > 0 else min(far, t)
        scores = np.zeros(len(frames))
        held: dict[int, torch.Tensor] = {}
        for (s, d), end in sorted(reach.items()):
            for t, prob in _run(engine, frames, range(s, end + d, d), usable[s], ids):
                if t not in pairs or s not in pairs[t]:
                    continue  # passed on the way to a farther frame
                other = _one_hot(usable[s], ids) if len(pairs[t]) == 1 else held.pop(t, None)
                if other is None:
                    held[t] = prob.half()
                    continue
                other = other.float()
                scores[t] = disagreement(prob, other)
                if predictions is not None:
                    both = prob if len(pairs[t]) == 1 else prob + other
                    predictions[t] = np.asarray([0, *ids], np.uint8)[both.argmax(0).numpy()]
        return scores

    return score
