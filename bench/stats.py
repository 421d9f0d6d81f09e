"""Pure statistics for the benchmarks: percentiles, latency summaries and run-to-run spreads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's default).

    NaN for an empty sequence, so a failed run shows as a gap rather than a zero.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Count, mean and the percentiles the reports use, in milliseconds."""
    ordered = sorted(latencies_ms)
    count = len(ordered)
    return {
        "count": count,
        "mean_ms": sum(ordered) / count if count else math.nan,
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if count else math.nan,
    }


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of repeated runs with the smallest and largest run beside it."""

    median: float
    min: float
    max: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": self.runs}


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, min and max over the runs that produced a number (None and NaN are left out)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return Spread(median(finite), min(finite), max(finite), len(finite))
