"""Frame suggestions: which frames of a video to label, chosen where propagation is least sure.

``twoshot budget --strategy uncertainty|disagreement --checkpoint CKPT`` picks, video by
video, the first frame as the ``uniform`` strategy does (the middle annotated frame: nothing
is known yet), then greedily the annotated frame with the highest score given the frames
chosen so far. ``uncertainty``: the pseudo label propagated from them (bidirectionally, with
the checkpoint's merge rule) is least confident, the mean over its pixels of 1 - max
probability. ``disagreement``: two independent propagations from them disagree most
(:mod:`twoshot.inference.disagreement`). That frame's own label then replaces the least
trustworthy prediction, and the propagation is redone for the next pick. Only the chosen
frames' annotation PNGs feed the propagation (others are opened only to skip frames that
show no object), so the suggestion uses what a user labeling frame by frame would have.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence

import numpy as np

from twoshot.data.budget import MODEL_STRATEGIES, Budget, choose_frames, frame_entry, object_checker
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_frames
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.key_cache import FrameSource

# frames, {frame: uint8 [H, W] labels} -> float [T] uncertainty per frame (0 on labeled frames)
Uncertainty = Callable[[FrameSource, Mapping[int, np.ndarray]], np.ndarray]
# {frame: uint8 [H, W]}: each call of a scorer fills it with the unlabeled frames' predictions
Predictions = MutableMapping[int, np.ndarray]


def propagation_uncertainty(engine: PropagationEngine, predictions: Predictions | None = None) -> Uncertainty:
    """The uncertainty of each frame's bidirectional propagation under ``engine``: the mean
    over its H x W pixels of 1 - the winning probability (from the uint8 confidence map).
    predictions: filled on each call with every frame's propagated labels uint8 [H, W]."""

    def uncertainty(frames: FrameSource, masks: Mapping[int, np.ndarray]) -> np.ndarray:
        scores = np.zeros(len(frames))
        for out in engine.frames(frames, masks, direction="bidirectional", confidence=True):
            assert out.confidence is not None
            scores[out.frame] = 1.0 - float(out.confidence.mean()) / 255.0
            if predictions is not None:
                predictions[out.frame] = out.labels
        return scores

    return uncertainty


def model_scorer(
    strategy: str, engine: PropagationEngine, predictions: Predictions | None = None
) -> Uncertainty:
    """The per-frame score of model-based strategy ``strategy`` (one of
    :data:`MODEL_STRATEGIES`) under ``engine``; ValueError for another name."""
    from twoshot.inference.disagreement import propagation_disagreement

    if strategy == "uncertainty":
        return propagation_uncertainty(engine, predictions)
    if strategy == "disagreement":
        return propagation_disagreement(engine, predictions)
    raise ValueError(f"strategy must be one of {MODEL_STRATEGIES}, got {strategy!r}")


def greedy_picks(
    frames: FrameSource,
    masks: Mapping[int, np.ndarray],
    count: int,
    score: Uncertainty,
    candidates: Collection[int],
    label: Callable[[int], np.ndarray | None],
) -> list[int]:
    """Up to ``count`` frames among ``candidates`` picked one at a time, each the highest
    ``score(frames, masks so far)`` (ties to the earlier frame), in the order picked.

    masks: {frame: uint8 [H, W]} known before the first pick; label(frame): the mask a pick
    adds to them for the next score (None: the frame cannot be used, the next best is tried).
    """
    known = dict(masks)
    picks: list[int] = []
    refused: set[int] = set()
    while len(picks) < count:
        scores = score(frames, known)
        # Most uncertain first; ties to the earlier frame (a stable sort).
        order = sorted(
            (c for c in candidates if c not in known and c not in refused), key=lambda c: -scores[c]
        )
        for pick in order:
            labels = label(pick)
            if labels is not None:
                picks.append(pick)
                known[pick] = labels
                break
            refused.add(pick)
        else:
            break
    return picks


def suggest_frames(
    seq: VideoSequence, shots: int, uncertainty: Uncertainty, frames: FrameSource | None = None
) -> list[int]:
    """``shots`` frame indices of ``seq`` to label, ascending (see the module docstring).

    seq: a video with the annotation PNGs it may choose among in ``mask_paths``; frames: its
    frames (read from ``seq`` if None). Frames whose PNG shows no object are never chosen; a
    video with fewer such frames than ``shots`` gets them all.
    """
    candidates = sorted(seq.mask_paths)
    usable = object_checker(seq)
    chosen = choose_frames(candidates, 1, "uniform", random.Random(0), usable)
    if not chosen:
        return []
    frames = load_frames(seq) if frames is None else frames
    masks = {chosen[0]: read_mask(seq.mask_paths[chosen[0]])[0]}

    def label(index: int) -> np.ndarray | None:
        return read_mask(seq.mask_paths[index])[0] if usable(index) else None

    return sorted(chosen + greedy_picks(frames, masks, shots - 1, uncertainty, candidates, label))


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
    strategy: str = "uncertainty",
) -> Budget:
    """The ``strategy`` (``uncertainty`` or ``disagreement``) label budget of ``sequences``:
    :func:`suggest_frames` per video with :func:`model_scorer` of ``engine``. UserError
    (before any work) if a video has fewer annotated frames than ``shots``, or none that
    shows an object."""
    check_shots(sequences, shots)
    uncertainty = model_scorer(strategy, engine)
    budget: Budget = {}
    for number, seq in enumerate(sequences, start=1):
        chosen = suggest_frames(seq, shots, uncertainty)
        if not chosen:
            raise UserError(f"video {seq.name}: none of its annotation PNGs shows an object")
        budget[seq.name] = [frame_entry(seq, i) for i in chosen]
        if log is not None:
            log(f"[{number}/{len(sequences)}] {seq.name}: {', '.join(budget[seq.name])}")
    return budget
