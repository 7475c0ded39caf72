"""Quantiles estimated from a histogram's bucket counts.

An explicit-bucket histogram knows how many values fell in each bucket, not the values, so a
quantile is an estimate: find the bucket holding the rank `q × count` and interpolate linearly
inside it, assuming its values are spread evenly (as Prometheus' `histogram_quantile` does).
The open-ended first and last buckets are closed with the histogram's recorded Min and Max:
the first bucket starts at Min (or at its upper bound when Min is above it), the last ends at
Max (or at its lower bound). The error is at most the width of the bucket holding the rank.
"""

from __future__ import annotations

from collections.abc import Sequence


def histogram_quantile(
    q: float, counts: Sequence[int], bounds: Sequence[float], low: float, high: float
) -> float | None:
    """The estimated `q`-quantile (0 ≤ q ≤ 1) of a histogram, or None when it holds no values.

    `counts[i]` counts the values in (bounds[i - 1], bounds[i]]; there is one more count than
    bounds. `low` and `high` are the histogram's Min and Max."""
    total = sum(counts)
    if total == 0 or len(counts) != len(bounds) + 1:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count == 0 or seen + count < rank:
            seen += count
            continue
        lower = bounds[i - 1] if i > 0 else min(low, bounds[0]) if bounds else low
        upper = bounds[i] if i < len(bounds) else max(high, bounds[-1]) if bounds else high
        return lower + (upper - lower) * (rank - seen) / count
    return None  # unreachable: the last non-empty bucket holds rank q × total ≤ total
