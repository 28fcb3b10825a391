"""Which frames each propagation run processes, and in what order.

Two schedules:

- **forward** (STCN's evaluation): one run from the first annotated frame to the end; an
  annotated frame adds its objects (objects may appear mid-video, YouTube-VOS style).
- **nearest** (the two-shot intermediate inference, DESIGN.md section 2): every labeled
  frame starts a backward and a forward run, each with only its own labeled frame (and what
  it predicts) in memory; each unlabeled frame takes the run from its nearest labeled frame,
  ties going to the later labeled frame. Each run stops at the last frame assigned to it.
- **fused** (``inference.merge: fused``): frames before the first and after the last labeled
  frame as in ``nearest``; between two labeled frames A < B a forward run from A and a
  backward run from B each cover the whole gap, and every gap frame carries the weight of
  each run's result in the combination (:func:`fusion_weights`).

A run is planned into :class:`Step` s that say, per frame, what to do, reproducing STCN's
rules: a memory frame when ``mem_every`` frames have passed since the last one (counted
from the last annotated frame), an optional temporary memory of the previous frame, and
frames that are neither output nor memory skipped (unless the model carries state from
frame to frame, as Cutie's sensory memory: then every frame up to the last output is
segmented, as Cutie's ``InferenceCore`` does).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from twoshot.model.interface import PERMANENT, TEMPORARY


@dataclass
class Step:
    """What a run does on one frame.

    predict: segment the enabled objects from memory; annotation: overlay the frame's given
    masks (new objects are enabled); emit: the result is an output; memory: None,
    ``"permanent"`` or ``"temporary"`` (the value to add to memory afterwards).
    """

    frame: int
    predict: bool
    annotation: bool
    emit: bool
    memory: str | None


@dataclass
class Run:
    """One propagation direction: its steps, annotated frames, and the label of its source."""

    source: int  # the (first) annotated frame it starts from
    direction: int  # +1 forward, -1 backward
    annotated: list[int]  # annotated frames it uses, in processing order
    steps: list[Step] = field(default_factory=list)
    # Frames whose result is one part of a combination, with this run's weight in it; frames
    # absent here take this run's result alone.
    weights: dict[int, float] = field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        """Frames the run touches, in processing order."""
        return [step.frame for step in self.steps]


def plan_steps(
    order: Sequence[int],
    annotated: Collection[int],
    outputs: Collection[int],
    mem_every: int,
    include_last: bool,
    every_frame: bool = False,
) -> list[Step]:
    """Plan a run over frames ``order`` (processing order, starting at an annotated frame).

    annotated: frames whose masks are given; outputs: frames whose result is wanted;
    every_frame: segment frames nobody reads too (models with state between frames).
    Frames before the first annotated one are skipped; steps after the last output are
    dropped (propagation is causal: the outputs do not depend on them).
    """
    if mem_every < 1:
        raise ValueError(f"mem_every must be at least 1, got {mem_every}")
    steps: list[Step] = []
    last_memory = -1
    enabled = False
    end = len(order) - 1
    for pos, frame in enumerate(order):
        if frame in annotated:
            steps.append(
                Step(frame, predict=enabled, annotation=True, emit=frame in outputs, memory=PERMANENT)
            )
            last_memory, enabled = pos, True
            continue
        if not enabled:
            continue
        is_memory = pos - last_memory >= mem_every
        emit = frame in outputs
        if not (is_memory or include_last or emit or every_frame):
            continue  # as STCN's YouTube-VOS evaluation: nothing would read this frame
        memory = None
        if pos != end and (is_memory or include_last):
            memory = PERMANENT if is_memory else TEMPORARY
            if is_memory:
                last_memory = pos
        steps.append(Step(frame, predict=True, annotation=False, emit=emit, memory=memory))
    while steps and not steps[-1].emit:
        steps.pop()
    if steps:
        steps[-1].memory = None  # nothing reads a memory added after the last output
    return steps


def forward_runs(
    num_frames: int,
    annotated: Sequence[int],
    outputs: Collection[int] | None,
    mem_every: int,
    include_last: bool,
    every_frame: bool = False,
) -> list[Run]:
    """The STCN schedule: one forward run from the first annotated frame to the last output.

    outputs None = every frame from the first annotated one.
    """
    annotated = sorted(annotated)
    if not annotated:
        return []
    order = list(range(annotated[0], num_frames))
    wanted = set(order) if outputs is None else set(outputs)
    run = Run(annotated[0], +1, annotated)
    run.steps = plan_steps(order, set(annotated), wanted, mem_every, include_last, every_frame)
    return [run] if run.steps else []


def assign_sources(num_frames: int, labeled: Sequence[int]) -> list[int]:
    """For each frame, the labeled frame whose propagation it takes (DESIGN.md section 2).

    Frames before the first labeled frame come from it (backward), frames after the last from
    the last (forward); between labeled frames A < B, frames A+1 .. A+floor((B-A-1)/2) come
    from A and the rest from B (a tie goes to the later frame). A labeled frame maps to itself.
    """
    labeled = sorted(set(labeled))
    if not labeled:
        raise ValueError("at least one labeled frame is needed")
    if labeled[0] < 0 or labeled[-1] >= num_frames:
        raise ValueError(f"labeled frames {labeled} outside 0..{num_frames - 1}")
    sources = []
    for frame in range(num_frames):
        i = bisect_right(labeled, frame) - 1  # labeled[i] <= frame < labeled[i + 1]
        if i < 0:
            sources.append(labeled[0])
        elif labeled[i] == frame or i == len(labeled) - 1:
            sources.append(labeled[i])
        else:
            a, b = labeled[i], labeled[i + 1]
            sources.append(a if frame - a <= (b - a - 1) // 2 else b)
    return sources


def nearest_runs(
    num_frames: int,
    labeled: Sequence[int],
    outputs: Collection[int] | None,
    mem_every: int,
    include_last: bool,
    every_frame: bool = False,
) -> list[Run]:
    """The two-shot schedule: a backward and a forward run per labeled frame, each covering
    only the unlabeled frames assigned to it by :func:`assign_sources` (and, of those, only
    ``outputs`` if given). Runs with nothing to output are left out.
    """
    sources = assign_sources(num_frames, labeled)
    wanted = set(range(num_frames)) if outputs is None else set(outputs)
    runs = []
    for source in sorted(set(labeled)):
        mine = [f for f in range(num_frames) if sources[f] == source and f != source]
        for direction in (-1, +1):
            side = [f for f in mine if (f - source) * direction > 0]
            if not side:
                continue
            stop = max(side) if direction > 0 else min(side)
            order = list(range(source, stop + direction, direction))
            run = Run(source, direction, [source])
            run.steps = plan_steps(order, {source}, wanted & set(side), mem_every, include_last, every_frame)
            if run.steps:
                runs.append(run)
    return runs


def fusion_weights(frame: int, a: int, b: int) -> tuple[float, float]:
    """Weights of the forward run from labeled frame ``a`` and the backward run from ``b`` on a
    frame between them (a < frame < b): linear in the temporal distance, (b - t, t - a) / (b - a).

    A propagation drifts with every frame it carries the mask, so the nearer side is trusted
    more; at the midpoint both count equally. (The networks' own confidence was not used: a
    third of a demo bank's wrong pixels are confident, docs/inference.md.)
    """
    span = b - a
    return (b - frame) / span, (frame - a) / span


def fused_runs(
    num_frames: int,
    labeled: Sequence[int],
    outputs: Collection[int] | None,
    mem_every: int,
    include_last: bool,
    every_frame: bool = False,
) -> list[Run]:
    """The fused two-shot schedule: a backward run from the first labeled frame to frame 0, a
    forward run from the last to the end, and between each pair A < B of consecutive labeled
    frames a forward run from A and a backward run from B over all of A+1 .. B-1, with
    :attr:`Run.weights` from :func:`fusion_weights`. Each run holds only its own labeled
    frame (and its predictions) in memory. Runs with nothing to output are left out.
    """
    labeled = sorted(set(labeled))
    if not labeled:
        raise ValueError("at least one labeled frame is needed")
    if labeled[0] < 0 or labeled[-1] >= num_frames:
        raise ValueError(f"labeled frames {labeled} outside 0..{num_frames - 1}")
    wanted = set(range(num_frames)) if outputs is None else set(outputs)
    runs: list[Run] = []

    def add(source: int, direction: int, stop: int, weights: dict[int, float]) -> None:
        order = list(range(source, stop + direction, direction))
        run = Run(source, direction, [source], weights=weights)
        run.steps = plan_steps(order, {source}, wanted & set(order[1:]), mem_every, include_last, every_frame)
        if run.steps:
            runs.append(run)

    if labeled[0] > 0:
        add(labeled[0], -1, 0, {})
    for a, b in zip(labeled, labeled[1:]):
        if b - a < 2:
            continue
        gap = range(a + 1, b)
        add(a, +1, b - 1, {t: fusion_weights(t, a, b)[0] for t in gap})
        add(b, -1, a + 1, {t: fusion_weights(t, a, b)[1] for t in gap})
    if labeled[-1] < num_frames - 1:
        add(labeled[-1], +1, num_frames - 1, {})
    return runs
