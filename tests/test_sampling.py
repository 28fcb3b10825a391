"""Clip sampling: STCN's formula, phase-1 clips, the max-skip curriculum (twoshot.data.sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from twoshot.config import TrainConfig
from twoshot.data.sampling import (
    clip_rng,
    effective_max_skip,
    max_skip_at,
    sample_list_frames,
    sample_objects,
    sample_phase1_frames,
    sample_stcn_frames,
    skip_switch_steps,
)
from twoshot.errors import UserError


class Scripted:
    """A generator stand-in that returns scripted draws and checks the bounds it is asked for."""

    def __init__(
        self,
        integers: Sequence[tuple[int, int]] = (),
        randoms: Sequence[float] = (),
        choices: Sequence[Sequence[int]] = (),
    ) -> None:
        self._integers = list(integers)  # (expected high, value)
        self._randoms = list(randoms)
        self._choices = [list(c) for c in choices]

    def integers(self, high: int) -> int:
        expected, value = self._integers.pop(0)
        assert high == expected, f"integers({high}) but the script expected integers({expected})"
        assert 0 <= value < high
        return value

    def random(self) -> float:
        return self._randoms.pop(0)

    def choice(self, a: int, size: int, replace: bool) -> list[int]:
        assert not replace and size == 2
        return self._choices.pop(0)

    def done(self) -> bool:
        return not (self._integers or self._randoms or self._choices)


@pytest.mark.parametrize(
    "length, max_skip, draws, reverse, expected",
    [
        # j=5: start=randint(66)=10; f1=min(10+3+1, 65, 69)=14; f2=min(14+5+1, 68, 69)=20
        (70, 5, [(66, 10), (6, 3), (6, 5)], 0.7, [10, 14, 20]),
        # near the end the L-j caps bind: f1=min(65+5+1, 65, 69)=65, f2=min(71, 68, 69)=68; reversed
        (70, 5, [(66, 65), (6, 5), (6, 5)], 0.2, [68, 65, 65]),
        # short video, j=L=3: start=randint(1)=0, f1=min(0+1+1, 0, 2)=0, f2=min(0+2+1, 2, 2)=2
        (3, 5, [(1, 0), (4, 1), (4, 2)], 0.9, [0, 0, 2]),
        # j=min(10, 25)=10: start 0, f1=min(0+0+1, 0, 9)=0, f2=min(0+7+1, 10-5, 9)=5
        (10, 25, [(1, 0), (11, 0), (11, 7)], 0.5, [0, 0, 5]),
        # max skip 1: consecutive frames, f1=min(4+0+1, 19, 19)=5, f2=min(5+1+1, 20, 19)=7
        (20, 1, [(20, 4), (2, 0), (2, 1)], 0.99, [4, 5, 7]),
    ],
)
def test_stcn_formula_hand_computed(length, max_skip, draws, reverse, expected):
    rng = Scripted(draws, [reverse])
    assert sample_stcn_frames(rng, length, max_skip) == expected
    assert rng.done()


def test_stcn_formula_with_a_seeded_generator():
    # The same draws made by hand from a twin generator.
    for seed in range(20):
        twin = np.random.default_rng(seed)
        length, max_skip = 40, 10
        j = min(length, max_skip)
        start = int(twin.integers(length - j + 1))
        f1 = min(start + int(twin.integers(j + 1)) + 1, length - j, length - 1)
        f2 = min(f1 + int(twin.integers(j + 1)) + 1, length - j // 2, length - 1)
        clip = [start, f1, f2][::-1] if twin.random() < 0.5 else [start, f1, f2]
        assert sample_stcn_frames(np.random.default_rng(seed), length, max_skip) == clip


def test_stcn_clips_stay_in_range_and_reverse_half_the_time():
    rng = np.random.default_rng(0)
    backward = 0
    for _ in range(2000):
        clip = sample_stcn_frames(rng, 30, 7)
        assert all(0 <= f < 30 for f in clip)
        forward = clip if clip[0] <= clip[2] else clip[::-1]
        assert forward[0] <= forward[1] <= forward[2] and forward[2] - forward[0] <= 2 * 8
        backward += clip[0] > clip[2]
    assert 0.45 < backward / 2000 < 0.55


def test_list_sampling_of_two_labeled_frames_gives_reference_warmup_clips():
    # The reference warm-up runs STCN's formula on the 2-entry budget list: A,A,B or B,A,A.
    rng = np.random.default_rng(1)
    seen = {tuple(sample_list_frames(rng, [30, 65], 5)) for _ in range(200)}
    assert seen == {(30, 30, 65), (65, 30, 30)}


def test_phase1_hand_computed():
    # pair (5, 12); start = pair[1] = 12; forward; f1 = 12+2+1 = 15; f2 = min(15+4+1, 19) = 19;
    # forcing (0.3 < 0.5) and 5 is missing -> [5] + (12, 15) in time order
    rng = Scripted([(2, 1), (6, 2), (6, 4)], [0.9, 0.3], [[0, 1]])
    assert sample_phase1_frames(rng, 20, [5, 12], 5) == [5, 12, 15]
    assert rng.done()
    # start = 5, backward: f1 = 5-1 = 4, f2 = max(4-6, 0) = 0; forced -> [12] + (5, 4) backward
    rng = Scripted([(2, 0), (6, 0), (6, 5)], [0.1, 0.2], [[1, 0]])
    assert sample_phase1_frames(rng, 20, [5, 12], 5) == [12, 5, 4]
    # no forcing (0.9): the clip as sampled
    rng = Scripted([(2, 0), (6, 0), (6, 5)], [0.1, 0.9], [[0, 1]])
    assert sample_phase1_frames(rng, 20, [5, 12], 5) == [5, 4, 0]
    # start at frame 0 going backward has no room: it turns forward -> 0, 1, 2
    rng = Scripted([(2, 0), (6, 0), (6, 0)], [0.1, 0.9], [[0, 1]])
    assert sample_phase1_frames(rng, 20, [0, 12], 5) == [0, 1, 2]
    # one labeled frame: no pair draw, no forcing possible
    rng = Scripted([(1, 0), (4, 2), (4, 3)], [0.8, 0.1])
    assert sample_phase1_frames(rng, 10, [6], 3) == [6, 9, 9]
    assert rng.done()


def test_phase1_statistics():
    rng = np.random.default_rng(14159265)
    n, labeled, both, backward = 4000, [30, 65], 0, 0
    for _ in range(n):
        clip = sample_phase1_frames(rng, 70, labeled, 5)
        assert clip[0] in labeled  # always starts at a labeled frame
        step = np.sign(clip[1] - clip[0])
        assert step != 0 and np.sign(clip[2] - clip[1]) in (0, step)  # one time direction
        has_both = set(labeled) <= set(clip)
        both += has_both
        backward += step < 0
        if not has_both:  # the skip window over all frames
            assert abs(clip[1] - clip[0]) <= 6 and abs(clip[2] - clip[1]) <= 6
    # 35 frames apart with max skip 5: only forcing brings both in, with p 0.5
    assert 0.47 < both / n < 0.53
    assert 0.47 < backward / n < 0.53


def test_phase1_forcing_probability_is_a_parameter_and_close_frames_meet_naturally():
    rng = np.random.default_rng(3)
    never = [sample_phase1_frames(rng, 70, [30, 65], 5, force_both_p=0.0) for _ in range(300)]
    always = [sample_phase1_frames(rng, 70, [30, 65], 5, force_both_p=1.0) for _ in range(300)]
    assert not any({30, 65} <= set(c) for c in never)
    assert all({30, 65} <= set(c) and c[0] in (30, 65) for c in always)
    # labeled frames 2 apart: without forcing, both are in the clip when it heads towards the
    # other one (p 1/2) and lands on it: P(f1 = other) + P(f1 between, f2 = other) = 7/36
    natural = [sample_phase1_frames(rng, 70, [30, 32], 5, force_both_p=0.0) for _ in range(2000)]
    assert abs(np.mean([{30, 32} <= set(c) for c in natural]) - 7 / 72) < 0.025


def test_phase1_with_many_labeled_frames_starts_at_each():
    rng = np.random.default_rng(5)
    starts = {sample_phase1_frames(rng, 50, [3, 20, 40], 5)[0] for _ in range(300)}
    assert starts == {3, 20, 40}


def test_phase1_rejects_bad_input():
    with pytest.raises(ValueError):
        sample_phase1_frames(np.random.default_rng(0), 10, [], 5)
    with pytest.raises(ValueError):
        sample_phase1_frames(np.random.default_rng(0), 10, [10], 5)


def test_curriculum_switch_points_follow_train_config():
    config = TrainConfig()
    values, fractions = config.max_skip_values, config.max_skip_fractions
    assert skip_switch_steps(150_000, fractions) == [15_000, 30_000, 45_000, 60_000, 135_000]
    expected = {
        0: 5,
        14_999: 5,
        15_000: 10,
        29_999: 10,
        30_000: 15,
        45_000: 20,
        59_999: 20,
        60_000: 25,
        134_999: 25,
        135_000: 5,
        149_999: 5,
    }
    for step, skip in expected.items():
        assert max_skip_at(step, 150_000, values, fractions) == skip, step
    # the tiny preset's 800 iterations
    assert skip_switch_steps(800, fractions) == [80, 160, 240, 320, 720]
    assert [max_skip_at(s, 800) for s in (79, 80, 719, 720)] == [5, 10, 25, 5]


def test_curriculum_rejects_inconsistent_lists():
    with pytest.raises(UserError, match="one more entry"):
        max_skip_at(0, 100, [5, 10], [0.1, 0.2])
    with pytest.raises(UserError, match="increasing"):
        max_skip_at(0, 100, [5, 10, 15], [0.5, 0.2])
    with pytest.raises(UserError, match=">= 1"):
        max_skip_at(0, 100, [0, 10], [0.5])


def test_youtube_style_skip_division():
    assert [effective_max_skip(s, 5) for s in (5, 10, 15, 20, 25, 3)] == [1, 2, 3, 4, 5, 1]
    assert effective_max_skip(25) == 25
    with pytest.raises(UserError):
        effective_max_skip(5, 0)


def test_clip_rng_is_a_function_of_seed_epoch_index():
    a = clip_rng(7, 2, 11).integers(1 << 30, size=4)
    assert np.array_equal(a, clip_rng(7, 2, 11).integers(1 << 30, size=4))
    for other in ((7, 3, 11), (7, 2, 12), (8, 2, 11)):
        assert not np.array_equal(a, clip_rng(*other).integers(1 << 30, size=4))
    clip_rng(-1, 0, 0)  # negative seeds are accepted (taken modulo 2**64)


# ---------------------------------------------------------------- objects per clip


def test_objects_hand_computed():
    # Three draws among the objects not drawn yet: index 3 of [2, 4, 5, 9, 11], index 0 of
    # [2, 4, 5, 11], index 2 of [4, 5, 11].
    rng = Scripted(integers=[(5, 3), (4, 0), (3, 2)])
    assert sample_objects(rng, [2, 4, 5, 9, 11], 3) == [9, 2, 11]
    # Fewer objects than slots: all of them, one draw each, then no more draws.
    assert sample_objects(Scripted(integers=[(2, 1), (1, 0)]), [4, 7], 3) == [7, 4]
    assert sample_objects(Scripted(), [], 3) == []
    with pytest.raises(ValueError, match="num_objects"):
        sample_objects(Scripted(), [1], 0)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_objects_with_a_seeded_generator(count):
    # The expected draws computed independently: NumPy's choice over a list is that list's
    # entry at integers(len); STCN drew its target and second object with choice.
    objects = [3, 8, 1, 6, 12][:count]
    for seed in range(30):
        chosen = sample_objects(np.random.default_rng(seed), objects, 3)
        reference = np.random.default_rng(seed)
        rest, expected = list(objects), []
        for _ in range(min(3, count)):
            expected.append(int(reference.choice(rest)))
            rest.remove(expected[-1])
        assert chosen == expected
        assert len(set(chosen)) == len(chosen) == min(3, count) and set(chosen) <= set(objects)
    # STCN's two draws are unchanged: target = choice(objects), second = choice(the others).
    for seed in range(30):
        rng, reference = np.random.default_rng(seed), np.random.default_rng(seed)
        target = int(reference.choice(objects))
        others = [o for o in objects if o != target]
        second = [int(reference.choice(others))] if others else []
        assert sample_objects(rng, objects, 2) == [target, *second]


def test_objects_are_a_uniform_subset():
    rng = np.random.default_rng(0)
    counts: dict[frozenset[int], int] = {}
    for _ in range(4000):
        picked = frozenset(sample_objects(rng, [1, 2, 3, 4], 3))
        counts[picked] = counts.get(picked, 0) + 1
    assert len(counts) == 4 and all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())
