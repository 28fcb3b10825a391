"""DAVIS 2017 metrics: hand-worked J/F values and a slow reference written from DESIGN §4."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twoshot.evaluate import (
    EvalResult,
    boundary_map,
    disk_kernel,
    evaluate_sequence,
    f_measure,
    frame_scores,
    jaccard,
    statistics,
    tolerance_radius,
)

# ----------------------------------------------------------------- slow reference (DESIGN §4)


def ref_boundary(seg: np.ndarray) -> np.ndarray:
    """Boundary map, pixel by pixel from the DESIGN text."""
    s = seg.astype(bool)
    h, w = s.shape
    b = np.zeros((h, w), bool)

    def at(y: int, x: int) -> bool:
        return bool(s[y, x]) if y < h and x < w else False

    for y in range(h):
        for x in range(w):
            east, south, south_east = at(y, x + 1), at(y + 1, x), at(y + 1, x + 1)
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif x == w - 1:
                b[y, x] = s[y, x] ^ south
            elif y == h - 1:
                b[y, x] = s[y, x] ^ east
            else:
                b[y, x] = (s[y, x] ^ east) or (s[y, x] ^ south) or (s[y, x] ^ south_east)
    return b


def ref_dilate(b: np.ndarray, r: int) -> np.ndarray:
    """OR of ``b`` shifted by every (dy, dx) with dy^2 + dx^2 <= r^2; nothing wraps around."""
    h, w = b.shape
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            src = b[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out


def ref_j_f(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    union = np.sum(p | g)
    j = 1.0 if union == 0 else np.sum(p & g) / union
    r = math.ceil(0.008 * math.sqrt(p.shape[0] ** 2 + p.shape[1] ** 2))
    bp, bg = ref_boundary(p), ref_boundary(g)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        prec, rec = 1.0, 1.0
    elif n_p == 0:
        prec, rec = 1.0, 0.0
    elif n_g == 0:
        prec, rec = 0.0, 1.0
    else:
        prec = (bp & ref_dilate(bg, r)).sum() / n_p
        rec = (bg & ref_dilate(bp, r)).sum() / n_g
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return float(j), float(f)


def ref_stats(v: np.ndarray) -> tuple[float, float, float]:
    n = len(v)
    edges = [int(round(1 + i * (n - 1) / 4 + 1e-10)) - 1 for i in range(5)]
    first, last = v[edges[0] : edges[1] + 1], v[edges[3] : edges[4] + 1]
    return float(np.nanmean(v)), float(np.mean(v > 0.5)), float(np.mean(first) - np.mean(last))


def ref_sequence(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = np.where(gt[0] == 255, 0, gt[0])
    objs = range(1, int(first.max()) + 1)
    gt = np.where(gt == 255, 0, gt)
    j = np.zeros((len(objs), len(gt) - 2))
    f = np.zeros_like(j)
    for i, o in enumerate(objs):
        for t in range(1, len(gt) - 1):
            j[i, t - 1], f[i, t - 1] = ref_j_f(pred[t] == o, gt[t] == o)
    return j, f


def random_pair(
    rng: np.random.Generator, t: int, h: int, w: int, objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """GT label stack with blocky, ragged objects and void; prediction = noisy shifted GT."""
    cell = max(1, min(h, w) // 5)
    coarse = rng.integers(0, objects + 1, size=(t, h // cell + 2, w // cell + 2))
    gt = np.repeat(np.repeat(coarse, cell, 1), cell, 2)[:, :h, :w].astype(np.uint8)
    flips = rng.random(gt.shape) < 0.08
    gt = np.where(flips, rng.integers(0, objects + 1, gt.shape), gt).astype(np.uint8)
    gt[0, 0, 0] = objects  # every object id up to `objects` counts
    gt[rng.random(gt.shape) < 0.02] = 255  # void
    pred = np.roll(np.where(gt == 255, 0, gt), shift=(1, -1), axis=(1, 2))
    noise = rng.random(gt.shape) < 0.1
    pred = np.where(noise, rng.integers(0, objects + 2, gt.shape), pred).astype(np.uint8)
    pred[rng.random(gt.shape) < 0.01] = 255  # labels the GT does not have are ignored
    return pred, gt


# ----------------------------------------------------------------- boundary map, tolerance


def test_boundary_of_a_rectangle_is_the_ring_around_its_top_left() -> None:
    seg = np.zeros((8, 9), bool)
    seg[2:5, 3:7] = True  # rows 2..4, cols 3..6
    expected = np.zeros_like(seg)
    expected[1:5, 2:7] = True  # the 2x2 blocks straddling the edge start at rows 1..4, cols 2..6
    expected[2:4, 3:6] = False  # blocks fully inside
    assert np.array_equal(boundary_map(seg), expected)
    assert np.array_equal(boundary_map(seg), ref_boundary(seg))


def test_boundary_edge_rules() -> None:
    full = np.ones((4, 5), bool)
    assert not boundary_map(full).any()  # a mask covering the image has no boundary
    corner = np.zeros((4, 5), bool)
    corner[-1, -1] = True
    expected = np.zeros_like(corner)
    expected[2, 3] = expected[2, 4] = expected[3, 3] = True  # never the corner itself
    assert np.array_equal(boundary_map(corner), expected)
    stack = np.stack([full, corner])
    assert np.array_equal(boundary_map(stack), np.stack([boundary_map(full), expected]))


def test_tolerance_and_disk() -> None:
    assert tolerance_radius(480, 854) == 8  # DAVIS 480p
    assert tolerance_radius(50, 50) == 1
    assert tolerance_radius(151, 203) == 3
    assert np.array_equal(disk_kernel(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    skimage = pytest.importorskip("skimage.morphology")
    for r in range(1, 12):
        assert np.array_equal(disk_kernel(r), skimage.disk(r))


# ----------------------------------------------------------------- hand-worked J and F


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_shifted_rectangles() -> None:
    gt = rect(50, 50, 10, 20, 10, 20)  # 10x10 square, tolerance r = 1 (a plus sign)
    pred = rect(50, 50, 10, 20, 13, 23)  # moved 3 columns right
    assert jaccard(pred, gt) == pytest.approx(70 / 130)
    # Each 40-pixel ring: 9 + 9 pixels of the top/bottom rows and the 2 pixels next to the
    # other ring's rows on the near side lie within 1 pixel of the other ring: P = R = 1/2.
    assert f_measure(pred, gt) == pytest.approx(0.5)
    assert ref_j_f(pred, gt) == pytest.approx((70 / 130, 0.5))


def test_one_pixel_objects() -> None:
    gt = np.zeros((20, 30), bool)
    gt[5, 5] = True
    assert (jaccard(gt, gt), f_measure(gt, gt)) == (1.0, 1.0)
    beside = np.roll(gt, 1, axis=1)  # boundaries {(4..5, 5..6)} and {(4..5, 4..5)} touch
    assert (jaccard(beside, gt), f_measure(beside, gt)) == (0.0, 1.0)
    far = np.roll(gt, 3, axis=1)  # two pixels between the boundaries, r = 1
    assert (jaccard(far, gt), f_measure(far, gt)) == (0.0, 0.0)
    corner = np.zeros((20, 30), bool)
    corner[-1, -1] = True  # 3-pixel boundary at the image corner
    assert (jaccard(corner, corner), f_measure(corner, corner)) == (1.0, 1.0)


def test_empty_prediction_and_empty_ground_truth() -> None:
    gt = rect(30, 40, 5, 15, 5, 15)
    empty = np.zeros_like(gt)
    assert (jaccard(empty, gt), f_measure(empty, gt)) == (0.0, 0.0)  # P = 1, R = 0
    assert (jaccard(gt, empty), f_measure(gt, empty)) == (0.0, 0.0)  # P = 0, R = 1
    assert (jaccard(empty, empty), f_measure(empty, empty)) == (1.0, 1.0)


def test_full_frame_object_has_no_boundary() -> None:
    full = np.ones((12, 17), bool)
    half = rect(12, 17, 0, 12, 0, 9)
    assert f_measure(full, full) == 1.0
    assert f_measure(half, full) == 0.0  # prediction boundary, none in GT: P = 0, R = 1
    assert jaccard(half, full) == pytest.approx(108 / 204)


def test_missing_and_extra_objects_and_void() -> None:
    h, w = 50, 50
    gt = np.zeros((3, h, w), np.uint8)
    gt[:, 10:20, 10:20] = 1
    gt[:, 30:40, 30:40] = 2
    gt[:, 0:5, 0:50] = 255  # void: read as background
    pred = np.zeros_like(gt)
    pred[:, 10:20, 13:23] = 1  # object 1 shifted, object 2 missing
    pred[:, 30:40, 30:40] = 7  # an object the GT does not have, over object 2
    pred[:, 0:5, 0:10] = 1  # object 1 on void pixels counts as false positive
    scores = evaluate_sequence(pred, gt, name="v")
    assert scores.object_ids == (1, 2)  # from gt[0], 255 is not an object
    assert scores.j.shape == (2, 1)  # first and last frame skipped
    assert scores.j[0, 0] == pytest.approx(70 / (130 + 50))
    assert scores.j[1, 0] == 0.0 and scores.f[1, 0] == 0.0
    # The void strip adds a 5x10 rectangle (rows 0..4, cols 0..9) to the prediction; at the
    # image's top-left edge its boundary is row 4 (10 pixels) and column 9 above it (4),
    # all far from the GT square: P = 20 / 54, R = 20 / 40, F = 20 / 47.
    p_ring, pred_matched = 40 + 14, 20
    precision, recall = pred_matched / p_ring, 20 / 40
    assert scores.f[0, 0] == pytest.approx(2 * precision * recall / (precision + recall))
    assert scores.f[0, 0] == pytest.approx(20 / 47)
    j, f = ref_sequence(pred, gt)
    assert np.allclose(scores.j, j) and np.allclose(scores.f, f)


def test_frame_scores_and_object_ids() -> None:
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 3
    pred = gt.copy()
    j, f = frame_scores(pred, gt, [1, 3])
    assert j.tolist() == [1.0, 1.0] and f.tolist() == [1.0, 1.0]  # object 1 absent in both
    seq = evaluate_sequence(np.stack([pred] * 4), np.stack([gt] * 4), skip_first_last=False)
    assert seq.object_ids == (1, 2, 3) and seq.j.shape == (3, 4)
    with pytest.raises(ValueError):
        evaluate_sequence(pred[None], np.stack([gt, gt]))


# ----------------------------------------------------------------- statistics


def test_mean_recall_decay_by_hand() -> None:
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # edges round(linspace(1, 9, 5)) - 1 = 0, 2, 4, 6, 8: decay = mean(v[0:3]) - mean(v[6:9])
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(0.6)
    assert recall == pytest.approx(5 / 9)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx(0.9 - 0.3)


def test_decay_bins_use_the_1e10_nudge() -> None:
    # linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3: without the nudge 2.5 would round to 2;
    # with it the edges are 0, 1, 1, 2, 2 and the last bin is v[2:3].
    v = np.array([1.0, 0.5, 0.0])
    assert statistics(v) == pytest.approx((0.5, 1 / 3, 0.75 - 0.0))
    assert statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))
    # Bins overlap: n = 6 gives edges 0, 1, 3, 4, 5 and bins v[0:2], ..., v[4:6].
    v6 = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert statistics(v6)[2] == pytest.approx(0.9 - 0.1)
    assert statistics(np.array([np.nan, 1.0, 0.0]))[0] == pytest.approx(0.5)  # nanmean
    assert all(math.isnan(x) for x in statistics(np.array([])))


def test_global_means_weigh_objects_equally() -> None:
    gt = np.zeros((3, 20, 20), np.uint8)
    gt[:, 2:6, 2:6] = 1
    one = evaluate_sequence(gt, gt, name="a")  # 1 object, J = 1
    gt2 = gt.copy()
    gt2[:, 10:14, 10:14] = 2
    two = evaluate_sequence(np.zeros_like(gt2), gt2, name="b")  # 2 objects, J = 0
    result = EvalResult.from_sequences([one, two])
    assert [o.name for o in result.objects] == ["a_1", "b_1", "b_2"]
    assert result.scores["J-Mean"] == pytest.approx(1 / 3)
    assert result.scores["F-Mean"] == pytest.approx(1 / 3)
    assert result.j_and_f == pytest.approx(1 / 3)
    assert result.scores["J-Recall"] == pytest.approx(1 / 3)
    assert math.isnan(EvalResult.from_sequences([]).j_and_f)


# ----------------------------------------------------------------- fast == reference


@pytest.mark.parametrize(
    "shape", [(9, 37, 53), (3, 151, 203), (4, 1, 40), (4, 23, 1), (4, 2, 2), (6, 64, 97)]
)
def test_fast_matches_reference_on_random_masks(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    pred, gt = random_pair(rng, *shape, objects=3)
    fast = evaluate_sequence(pred, gt)
    j, f = ref_sequence(pred, gt)
    assert fast.j.shape == j.shape
    np.testing.assert_allclose(fast.j, j, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.f, f, rtol=0, atol=1e-6)
    for index, obj in enumerate(fast.objects()):
        assert (obj.j_mean, obj.j_recall, obj.j_decay) == pytest.approx(ref_stats(j[index]))
        assert (obj.f_mean, obj.f_recall, obj.f_decay) == pytest.approx(ref_stats(f[index]))


def test_fast_matches_reference_on_small_objects_near_edges() -> None:
    # Few, small objects: the per-object windows are small and often touch the image edge.
    rng = np.random.default_rng(7)
    h, w = 131, 97
    gt = np.zeros((4, h, w), np.uint8)
    pred = np.zeros_like(gt)
    for t in range(4):
        for obj in (1, 2, 3):
            y, x = rng.integers(-3, h - 2), rng.integers(-3, w - 2)
            gt[t, max(y, 0) : y + rng.integers(1, 9), max(x, 0) : x + rng.integers(1, 9)] = obj
            y, x = y + rng.integers(-3, 4), x + rng.integers(-3, 4)
            pred[
                t, max(y, 0) : max(y + rng.integers(1, 9), 0), max(x, 0) : max(x + rng.integers(1, 9), 0)
            ] = obj
    gt[0, 0, 0] = 3
    fast = evaluate_sequence(pred, gt)
    j, f = ref_sequence(pred, gt)
    np.testing.assert_allclose(fast.j, j, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.f, f, rtol=0, atol=1e-6)
