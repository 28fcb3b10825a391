"""Which frames of a video make a training clip, how far apart they may be, and which objects.

Pure functions of an explicit random generator (``numpy.random.Generator`` or anything with
its ``integers``, ``random`` and ``choice`` methods), so a clip is reproducible from a seed and
the formulas can be checked against hand-computed cases. DESIGN.md §2-3.

- :func:`sample_stcn_frames`: STCN's reference sampling over a list of ``length`` frames.
- :func:`sample_phase1_frames`: two-shot phase-1 clips that start at a labeled frame.
- :func:`sample_objects`: the objects a clip is trained on (up to ``num_objects``).
- :func:`max_skip_at` / :func:`skip_switch_steps`: the max-skip curriculum.
- :func:`clip_rng`: the generator of one sample, from ``(seed, epoch, index)``.
- :func:`effective_max_skip`: YouTube-VOS-style data (annotations every 5th frame) divides
  the max skip by the annotation stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from twoshot.config_checks import check_curriculum
from twoshot.errors import UserError

CLIP_LENGTH = 3  # STCN trains on 3-frame clips; the formulas below are written for 3 frames.


class RandomSource(Protocol):
    """The part of ``numpy.random.Generator`` the samplers use (a stub can stand in, in tests)."""

    def integers(self, high: int) -> int: ...  # uniform in [0, high)

    def random(self) -> float: ...  # uniform in [0, 1)

    def choice(self, a: int, size: int, replace: bool) -> Sequence[int]: ...  # distinct draws


def sample_stcn_frames(rng: RandomSource, length: int, max_skip: int, reverse_p: float = 0.5) -> list[int]:
    """STCN's reference clip sampling over positions ``0 .. length-1``.

    With ``j = min(length, max_skip)``: ``start = randint(length-j+1)``,
    ``f1 = min(start+randint(j+1)+1, length-j, length-1)``,
    ``f2 = min(f1+randint(j+1)+1, length-j//2, length-1)``; the clip is reversed when
    ``rng.random() < reverse_p``. The ``length-j`` caps keep the clip from piling up at the
    end of the video (the reference's "don't bias towards beginning/end"); for very short
    lists they also make repeated positions possible, as in the reference.

    Draws, in order: three ``integers`` then one ``random``.
    Returns 3 positions (ints in ``[0, length)``), in clip order.
    """
    if length < 1:
        raise ValueError(f"cannot sample a clip from {length} frames")
    if max_skip < 1:
        raise ValueError(f"max_skip must be >= 1, got {max_skip}")
    j = min(length, max_skip)
    start = int(rng.integers(length - j + 1))
    f1 = min(start + int(rng.integers(j + 1)) + 1, length - j, length - 1)
    f2 = min(f1 + int(rng.integers(j + 1)) + 1, length - j // 2, length - 1)
    clip = [start, f1, f2]
    if rng.random() < reverse_p:
        clip.reverse()
    return clip


def sample_window_frames(
    rng: RandomSource, length: int, num_frames: int, max_skip: int, reverse_p: float = 0.5
) -> list[int]:
    """Cutie's clip sampling: ``num_frames`` distinct positions of ``0 .. length-1``.

    From a uniform seed position, each next position is drawn uniformly from the positions
    within ``j = min(length, max_skip)`` of any already drawn one and not drawn yet (the
    reference grows this window around every new position); the clip is sorted and reversed
    when ``rng.random() < reverse_p``. Needs ``length >= num_frames``.

    Draws, in order: ``integers`` (seed), ``num_frames - 1`` ``integers`` (each an index into
    the sorted window), then one ``random``. Returns ``num_frames`` positions in clip order.
    """
    if length < num_frames:
        raise ValueError(f"cannot sample {num_frames} distinct frames from {length}")
    if max_skip < 1:
        raise ValueError(f"max_skip must be >= 1, got {max_skip}")
    j = min(length, max_skip)
    drawn = [int(rng.integers(length))]
    window: set[int] = set()
    while len(drawn) < num_frames:
        last = drawn[-1]
        window |= set(range(max(0, last - j), min(length, last + j + 1)))
        window -= set(drawn)
        choices = sorted(window)
        drawn.append(choices[int(rng.integers(len(choices)))])
    clip = sorted(drawn)
    if rng.random() < reverse_p:
        clip.reverse()
    return clip


def sample_list_frames(
    rng: RandomSource, frames: Sequence[int], max_skip: int, reverse_p: float = 0.5
) -> list[int]:
    """STCN sampling over an explicit list of frame indices (e.g. only the annotated ones).

    ``frames``: sorted frame indices the clip may use; the skip counts positions in this
    list, as the reference does when its frame list holds only annotated frames (warm-up on
    labeled frames, YouTube-VOS every 5th frame). Returns 3 frame indices from ``frames``.
    """
    positions = sample_stcn_frames(rng, len(frames), max_skip, reverse_p)
    return [int(frames[p]) for p in positions]


def sample_phase1_frames(
    rng: RandomSource,
    length: int,
    labeled: Sequence[int],
    max_skip: int,
    reverse_p: float = 0.5,
    force_both_p: float = 0.5,
) -> list[int]:
    """A two-shot phase-1 clip: starts at a labeled frame, then two frames within the skip window.

    ``length``: frames in the video; ``labeled``: indices of its labeled frames (>= 1).
    A random pair of labeled frames (A, B) is chosen (the only pair for a two-shot budget)
    and the clip starts at one of them at random. The time direction is reversed with
    probability ``reverse_p``; a start at the last frame in that direction turns around so
    that the clip does not stand still. Then ``f1 = start + d*(randint(j+1)+1)`` and
    ``f2 = f1 + d*(randint(j+1)+1)``, ``j = min(length, max_skip)``, clamped to the video.
    With probability ``force_both_p`` (and >= 2 labeled frames) a clip that misses one of the
    pair is rebuilt as the reference does: ``[A] + (B, f1 in time order)``, where A is the
    pair's first frame in the clip's direction, so frame 0 is still labeled.

    Draws, in order: a pair (``choice``, only with >= 2 labeled), ``integers(2)`` (start),
    ``random`` (direction), two ``integers`` (offsets), ``random`` (forcing).
    Returns 3 frame indices in clip order; the first is always a labeled frame.
    """
    marks = sorted({int(f) for f in labeled})
    if not marks:
        raise ValueError("phase-1 sampling needs at least one labeled frame")
    if marks[0] < 0 or marks[-1] >= length:
        raise ValueError(f"labeled frames {marks} outside a video of {length} frames")
    if max_skip < 1:
        raise ValueError(f"max_skip must be >= 1, got {max_skip}")
    if len(marks) >= 2:
        pick = rng.choice(len(marks), size=2, replace=False)
        pair = sorted(marks[int(i)] for i in pick)
    else:
        pair = marks[:1]
    start = pair[int(rng.integers(len(pair)))]
    direction = -1 if rng.random() < reverse_p else 1
    if not 0 <= start + direction < length:
        direction = -direction  # no room this way: go the other way rather than repeat
    j = min(length, max_skip)

    def clamp(frame: int) -> int:
        return max(0, min(length - 1, frame))

    f1 = clamp(start + direction * (int(rng.integers(j + 1)) + 1))
    f2 = clamp(f1 + direction * (int(rng.integers(j + 1)) + 1))
    clip = [start, f1, f2]
    force = rng.random() < force_both_p
    if force and len(pair) == 2 and not (pair[0] in clip and pair[1] in clip):
        first, second = pair if direction > 0 else pair[::-1]
        clip = [first] + sorted([second, f1], key=lambda f: direction * f)
    return clip


def sample_objects(rng: RandomSource, objects: Sequence[int], num_objects: int) -> list[int]:
    """Up to ``num_objects`` distinct objects of ``objects`` (frame 0's ids), drawn one by one.

    Each draw picks uniformly among the objects not drawn yet (the rest's entry
    ``integers(len(rest))``, the same draw as NumPy's ``choice(rest)``, with which STCN draws
    its target and then its second object), until ``num_objects`` are drawn or none
    is left. The set is thus a uniform random subset of size ``min(num_objects, n)``, as the
    Cutie reference's (which subsamples only when there are more than ``num_objects`` and keeps
    the ids' order otherwise); the slots come in drawing order, which changes nothing for
    models that treat objects alike. Draws: one ``integers`` per object returned.
    """
    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    rest = [int(o) for o in objects]
    chosen: list[int] = []
    while rest and len(chosen) < num_objects:
        pick = rest[int(rng.integers(len(rest)))]
        chosen.append(pick)
        rest = [o for o in rest if o != pick]
    return chosen


def clip_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of ``epoch``: a pure function of the three numbers.

    Built from a SeedSequence over ``(seed, epoch, index)``, so samples do not depend on the
    DataLoader worker that makes them, on their order, or on earlier samples (exact resume).
    Negative values are taken modulo 2**64.
    """
    return np.random.default_rng([int(v) % (1 << 64) for v in (seed, epoch, index)])


def effective_max_skip(max_skip: int, annotation_stride: int = 1) -> int:
    """Max skip in positions of the frame list: ``max(1, max_skip // annotation_stride)``.

    YouTube-VOS training frames are every 5th frame of the original video, so the reference
    divides the curriculum's skip by 5 (``annotation_stride=5``); never below 1.
    """
    if annotation_stride < 1:
        raise UserError(f"annotation stride must be >= 1, got {annotation_stride}")
    return max(1, int(max_skip) // annotation_stride)


def skip_switch_steps(total_steps: int, fractions: Sequence[float]) -> list[int]:
    """Steps at which the max skip changes: ``round(f * total_steps)`` for each fraction.

    Steps may be iterations or epochs, as long as ``total_steps`` is in the same unit.
    """
    return [int(round(f * total_steps)) for f in fractions]


def max_skip_at(
    step: int,
    total_steps: int,
    values: Sequence[int] = (5, 10, 15, 20, 25, 5),
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.9),
) -> int:
    """The curriculum's max skip at ``step`` (0-based) of ``total_steps``.

    ``values[0]`` until the first switch step, then ``values[i]`` from switch step ``i-1`` on
    (TrainConfig.max_skip_values / max_skip_fractions; STCN's 5, 10, 15, 20, 25, 5 at
    10/20/30/40/90 %). Raises UserError if the lists do not fit together.
    """
    check_curriculum(values, fractions)
    passed = sum(1 for s in skip_switch_steps(total_steps, fractions) if step >= s)
    return int(values[passed])
