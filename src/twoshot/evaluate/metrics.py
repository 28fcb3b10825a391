"""DAVIS 2017 semi-supervised metrics: region similarity J and boundary F-measure.

The numbers equal those of davis2017-evaluation (DESIGN.md §4): J is the IoU of one object's
masks, F the boundary F-measure with the ``seg2bmap`` boundary and a disk tolerance of
``ceil(0.008 * diagonal)`` pixels; per object the per-frame values are reduced to Mean,
Recall and Decay, and the global figures are means over all objects of all sequences.

Why it is fast: the reference dilates two full-frame boundary maps per object and frame.
Both boundaries lie inside the bounding box of ``pred | gt`` (grown by one pixel up/left
and one zero row/column down/right), so every count is taken on that window only; the
window is chosen so that the boundary map, the dilation and the counts inside it are
exactly those of the full frame (see :func:`_object_window`). Objects absent from both
masks cost two comparisons, and dilations are skipped when one boundary is empty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

# Tolerance of the boundary measure as a fraction of the image diagonal (davis2017's bound_th).
BOUNDARY_TOLERANCE = 0.008

# Column order of davis2017-evaluation's global_results-*.csv.
GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)

VOID_LABEL = 255


def tolerance_radius(height: int, width: int) -> int:
    """Boundary tolerance in pixels for an image of ``height`` x ``width``.

    ``ceil(0.008 * sqrt(H^2 + W^2))``, computed with the same float operations as
    davis2017-evaluation (``np.linalg.norm`` of the shape) so the ceiling agrees at ties.
    """
    return int(np.ceil(BOUNDARY_TOLERANCE * np.linalg.norm((height, width))))


def disk_kernel(radius: int) -> np.ndarray:
    """Structuring element: uint8 [2r+1, 2r+1], 1 where x^2 + y^2 <= r^2 (skimage's ``disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, exactly davis2017's ``_seg2bmap``.

    mask: [..., H, W], nonzero = foreground; leading dimensions are independent masks.
    Returns bool [..., H, W]. A pixel is on the boundary when it differs from its right,
    lower or lower-right neighbour; on the last row only the right neighbour counts, on
    the last column only the lower one, and the bottom-right pixel is never a boundary.
    """
    seg = np.asarray(mask).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _object_window(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Window (row slice, column slice) holding every boundary pixel of two masks.

    rows / cols: indices of the rows / columns where ``pred | gt`` has a pixel (non-empty).
    The boundary at (i, j) depends on pixels (i..i+1, j..j+1), so it can be non-zero from
    one row/column before the box to its last row/column. Keeping one more (all-zero)
    row/column after the box makes the window's own last-row/last-column rule give the
    full-frame value there (0); where the box touches the image edge the window ends at
    the edge and the rule is the full frame's own.
    """
    y0 = max(int(rows[0]) - 1, 0)
    y1 = min(int(rows[-1]) + 2, height)
    x0 = max(int(cols[0]) - 1, 0)
    x1 = min(int(cols[-1]) + 2, width)
    return slice(y0, y1), slice(x0, x1)


def _f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """Boundary F-measure from boundary sizes and matched counts, davis2017's rules."""
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = pred_matched / float(n_pred)
        recall = gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    # Same operation order as the reference so the float64 result is bit-identical.
    return 2 * precision * recall / (precision + recall)


def _object_scores(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> tuple[float, float]:
    """J and F of one object in one frame.

    pred, gt: bool [H, W] masks of the object; kernel: :func:`disk_kernel` of the full
    frame's tolerance radius. Returns (J, F) as Python floats (float64).
    """
    height, width = gt.shape
    union = pred | gt
    row_any = union.any(axis=1)
    rows = np.flatnonzero(row_any)
    if rows.size == 0:
        # Neither mask has the object: empty union gives J = 1, two empty boundaries F = 1.
        return 1.0, 1.0
    cols = np.flatnonzero(union[rows[0] : rows[-1] + 1].any(axis=0))
    win = _object_window(rows, cols, height, width)
    p = pred[win]
    g = gt[win]
    inter = np.count_nonzero(p & g)
    j = inter / np.count_nonzero(union[win])

    bp = boundary_map(p)
    bg = boundary_map(g)
    n_p = int(np.count_nonzero(bp))
    n_g = int(np.count_nonzero(bg))
    if n_p == 0 or n_g == 0:
        # The counts are unused by the empty-boundary rules: no dilation needed.
        return float(j), _f_from_counts(n_p, n_g, 0, 0)
    if n_p == n_g and np.array_equal(bp, bg):
        # Identical boundaries match entirely (frequent for easy frames): P = R = 1.
        return float(j), _f_from_counts(n_p, n_g, n_p, n_g)
    # cv2.dilate's default constant border never lets outside pixels count, and outside the
    # window there is no boundary pixel, so dilating the window equals dilating the frame.
    bp_dil = cv2.dilate(bp.view(np.uint8), kernel).view(bool)
    bg_dil = cv2.dilate(bg.view(np.uint8), kernel).view(bool)
    pred_matched = int(np.count_nonzero(bp & bg_dil))
    gt_matched = int(np.count_nonzero(bg & bp_dil))
    return float(j), _f_from_counts(n_p, n_g, pred_matched, gt_matched)


def frame_scores(
    pred: np.ndarray, gt: np.ndarray, object_ids: Sequence[int], kernel: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of several objects in one frame.

    pred, gt: integer label images [H, W] (same shape); labels not in ``object_ids``
    (background, void 255, extra objects) belong to no object. kernel: the disk for this
    frame size (computed when None). Returns (J, F), each float64 [len(object_ids)].
    """
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be equal 2-D shapes")
    if kernel is None:
        kernel = disk_kernel(tolerance_radius(*gt.shape))
    j = np.empty(len(object_ids), dtype=np.float64)
    f = np.empty(len(object_ids), dtype=np.float64)
    for index, obj in enumerate(object_ids):
        j[index], f[index] = _object_scores(pred == obj, gt == obj, kernel)
    return j, f


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J of two binary masks [H, W]: |P & G| / |P | G|, 1 if both empty."""
    return frame_scores(np.asarray(pred) != 0, np.asarray(gt) != 0, (True,))[0][0].item()


def f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Boundary F-measure of two binary masks [H, W] (DESIGN §4, davis2017's ``f_measure``)."""
    return frame_scores(np.asarray(pred) != 0, np.asarray(gt) != 0, (True,))[1][0].item()


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall and Decay of one object's per-frame values (davis2017's ``db_statistics``).

    values: float [N]. Mean = nanmean; Recall = mean(values > 0.5); Decay = mean of the
    first minus mean of the last of four overlapping bins with edges
    ``round(linspace(1, N, 5) + 1e-10) - 1``. Empty input gives NaNs.

    The reference casts the bin edges to uint8, which wraps for N > 256 frames; edges are
    kept as plain integers here, so only sequences longer than 256 evaluated frames differ.
    """
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
        bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


@dataclass(frozen=True)
class ObjectScores:
    """Summary of one object of one sequence; ``name`` is davis2017's ``<video>_<id>``."""

    sequence: str
    object_id: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def name(self) -> str:
        """Row name in the per-sequence table, e.g. ``"bike-packing_2"``."""
        return f"{self.sequence}_{self.object_id}"


@dataclass(frozen=True)
class SequenceScores:
    """Per-frame scores of one sequence.

    name: video name. object_ids: scored objects (1..N). frame_names: the evaluated
    frames (without the first and last under the DAVIS protocol). j, f: float64
    [len(object_ids), len(frame_names)].
    """

    name: str
    object_ids: tuple[int, ...]
    frame_names: tuple[str, ...]
    j: np.ndarray
    f: np.ndarray

    def objects(self) -> list[ObjectScores]:
        """One :class:`ObjectScores` per object, in id order."""
        rows = []
        for index, obj in enumerate(self.object_ids):
            rows.append(ObjectScores(self.name, obj, *statistics(self.j[index]), *statistics(self.f[index])))
        return rows


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of a set of sequences.

    sequences: per-frame scores, in evaluation order. objects: per-object summaries in the
    same order (davis2017's per-sequence rows). scores: the global figures, keyed by
    :data:`GLOBAL_COLUMNS` (NaN when there is no object).
    """

    sequences: tuple[SequenceScores, ...]
    objects: tuple[ObjectScores, ...]
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_sequences(cls, sequences: Iterable[SequenceScores]) -> EvalResult:
        """Summarise per-sequence scores: objects weigh equally, whatever their sequence."""
        sequences = tuple(sequences)
        objects = tuple(obj for seq in sequences for obj in seq.objects())

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else math.nan

        j_mean = mean([o.j_mean for o in objects])
        f_mean = mean([o.f_mean for o in objects])
        scores = {
            "J&F-Mean": (j_mean + f_mean) / 2.0,
            "J-Mean": j_mean,
            "J-Recall": mean([o.j_recall for o in objects]),
            "J-Decay": mean([o.j_decay for o in objects]),
            "F-Mean": f_mean,
            "F-Recall": mean([o.f_recall for o in objects]),
            "F-Decay": mean([o.f_decay for o in objects]),
        }
        return cls(sequences, objects, scores)

    @property
    def j_and_f(self) -> float:
        """The headline number, (J-Mean + F-Mean) / 2."""
        return self.scores["J&F-Mean"]


def evaluate_sequence(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    name: str = "",
    object_ids: Sequence[int] | None = None,
    skip_first_last: bool = True,
    frame_names: Sequence[str] | None = None,
) -> SequenceScores:
    """Score one video held in memory, the DAVIS 2017 semi-supervised way.

    pred: integer labels [T, H, W] (the prediction; labels outside ``object_ids`` are
    ignored). gt: integer labels [T, H, W]; 255 is void and read as background.
    object_ids: objects to score; default 1..max label of ``gt[0]``. skip_first_last:
    drop the first and last frame (the DAVIS protocol; the first frame is the given
    annotation). frame_names: names of the T frames (default their indices).
    Returns a :class:`SequenceScores` with float64 J and F [objects, evaluated frames].
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [T, H, W]")
    if object_ids is None:
        first = gt[0]
        num_objects = int(np.max(np.where(first == VOID_LABEL, 0, first), initial=0))
        object_ids = range(1, num_objects + 1)
    object_ids = tuple(int(o) for o in object_ids)
    names = list(frame_names) if frame_names is not None else [str(t) for t in range(len(gt))]
    frames = range(1, len(gt) - 1) if skip_first_last else range(len(gt))
    kernel = disk_kernel(tolerance_radius(*gt.shape[1:]))
    j = np.zeros((len(object_ids), len(frames)), dtype=np.float64)
    f = np.zeros((len(object_ids), len(frames)), dtype=np.float64)
    for column, t in enumerate(frames):
        j[:, column], f[:, column] = frame_scores(pred[t], gt[t], object_ids, kernel)
    return SequenceScores(name, object_ids, tuple(names[t] for t in frames), j, f)
