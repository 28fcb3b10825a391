"""Frame suggestions: which frames of a video to label, chosen where propagation is least sure.

``twoshot budget --strategy uncertainty --checkpoint CKPT`` picks, video by video, the first
frame as the ``uniform`` strategy does (the middle annotated frame: nothing is known yet), then
greedily the annotated frame whose pseudo label, propagated from the frames chosen so far
(bidirectionally, with the checkpoint's merge rule), is least confident: the mean over its
pixels of 1 - max probability. That frame's own label then replaces the least trustworthy
prediction, and the propagation is redone for the next pick. Only the chosen frames'
annotation PNGs feed the propagation (others are opened only to skip frames that show no
object), so the suggestion uses what a user labeling frame by frame would have.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from twoshot.data.budget import Budget, _choose, _object_checker, frame_entry
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_frames
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.key_cache import FrameSource

# frames, {frame: uint8 [H, W] labels} -> float [T] uncertainty per frame (0 on labeled frames)
Uncertainty = Callable[[FrameSource, Mapping[int, np.ndarray]], np.ndarray]


def propagation_uncertainty(engine: PropagationEngine) -> Uncertainty:
    """The uncertainty of each frame's bidirectional propagation under ``engine``: the mean
    over its H x W pixels of 1 - the winning probability (from the uint8 confidence map)."""

    def uncertainty(frames: FrameSource, masks: Mapping[int, np.ndarray]) -> np.ndarray:
        scores = np.zeros(len(frames))
        for out in engine.frames(frames, masks, mode="bidirectional", confidence=True):
            assert out.confidence is not None
            scores[out.frame] = 1.0 - float(out.confidence.mean()) / 255.0
        return scores

    return uncertainty


def suggest_frames(
    seq: VideoSequence, shots: int, uncertainty: Uncertainty, frames: FrameSource | None = None
) -> list[int]:
    """``shots`` frame indices of ``seq`` to label, ascending (see the module docstring).

    seq: a video with the annotation PNGs it may choose among in ``mask_paths``; frames: its
    frames (read from ``seq`` if None). Frames whose PNG shows no object are never chosen; a
    video with fewer such frames than ``shots`` gets them all.
    """
    candidates = sorted(seq.mask_paths)
    usable = _object_checker(seq)
    chosen = _choose(candidates, 1, "uniform", random.Random(0), usable)
    if not chosen:
        return []
    frames = load_frames(seq) if frames is None else frames
    masks = {chosen[0]: read_mask(seq.mask_paths[chosen[0]])[0]}
    while len(chosen) < shots:
        scores = uncertainty(frames, masks)
        # Most uncertain first; ties to the earlier frame (a stable sort).
        order = sorted((c for c in candidates if c not in masks), key=lambda c: -scores[c])
        pick = next((c for c in order if usable(c)), None)
        if pick is None:
            break
        chosen.append(pick)
        masks[pick] = read_mask(seq.mask_paths[pick])[0]
    return sorted(chosen)


def check_shots(sequences: Sequence[VideoSequence], shots: int) -> None:
    """UserError, before any work, if a video has fewer annotated frames than ``shots``."""
    if shots < 1:
        raise UserError(f"--shots {shots}: need at least one labeled frame per video")
    short = [seq for seq in sequences if len(seq.mask_paths) < shots]
    if short:
        seq = short[0]
        more = f"; {len(short) - 1} more videos have too few" if len(short) > 1 else ""
        raise UserError(
            f"--shots {shots}: video {seq.name} has only {len(seq.mask_paths)} annotated frames "
            f"({seq.num_frames} frames){more}"
        )


def suggest_budget(
    sequences: Sequence[VideoSequence],
    shots: int,
    engine: PropagationEngine,
    log: Callable[[str], None] | None = None,
) -> Budget:
    """The ``uncertainty`` label budget of ``sequences``: :func:`suggest_frames` per video with
    :func:`propagation_uncertainty` of ``engine``. UserError (before any work) if a video has
    fewer annotated frames than ``shots``, or none that shows an object."""
    check_shots(sequences, shots)
    uncertainty = propagation_uncertainty(engine)
    budget: Budget = {}
    for number, seq in enumerate(sequences, start=1):
        chosen = suggest_frames(seq, shots, uncertainty)
        if not chosen:
            raise UserError(f"video {seq.name}: none of its annotation PNGs shows an object")
        budget[seq.name] = [frame_entry(seq, i) for i in chosen]
        if log is not None:
            log(f"[{number}/{len(sequences)}] {seq.name}: {', '.join(budget[seq.name])}")
    return budget
