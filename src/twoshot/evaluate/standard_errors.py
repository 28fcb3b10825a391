"""Statistics of scores over validation objects: standard errors of a mean and of a paired
difference (two models scored on the same objects)."""

from __future__ import annotations

import math
import statistics


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt(n)), or
    None with fewer than two values."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def paired_standard_error(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Standard error of mean(b - a) over the keys both hold (per-object scores of two models
    on the same objects), or None with fewer than two shared keys."""
    return standard_error([b[k] - a[k] for k in sorted(a.keys() & b.keys())])
