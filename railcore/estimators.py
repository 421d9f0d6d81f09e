"""Latency estimators: pure, with the sample's time passed in."""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class PeakEwma:
    """An EWMA that jumps straight to a worse sample and decays towards better ones.

    Peak-sensitive (as Finagle's and Linkerd's load balancers): a hub that turns slow is avoided at
    once; one that recovers earns its traffic back over a few samples. ``spread`` tracks the mean
    absolute deviation, for a p95-like bound (value + 2 * spread).
    """

    alpha: float = 0.2
    value: float | None = None
    spread: float = 0.0
    at: float = 0.0  # when the last sample came

    def update(self, sample: float, now: float = 0.0) -> float:
        self.at = now
        if self.value is None:
            self.value = sample
            return sample
        self.spread += self.alpha * (abs(sample - self.value) - self.spread)
        if sample > self.value:
            self.value = sample
        else:
            self.value += self.alpha * (sample - self.value)
        return self.value

    @property
    def p95(self) -> float | None:
        return None if self.value is None else self.value + 2 * self.spread

    def decayed(self, now: float, decay_s: float) -> float | None:
        """The value, fading towards zero while no sample comes (as Finagle's peak EWMA): a backend
        that was once slow and then left alone looks better and better until it is tried again,
        so one bad moment cannot keep it out of rotation for good."""
        if self.value is None or decay_s <= 0 or now <= self.at:
            return self.value
        return self.value * math.exp(-(now - self.at) / decay_s)


@dataclass(slots=True)
class TailWindow:
    """The last ``size`` samples, for a high quantile of recent latency (a tail, not a mean).

    A mean-ish estimate fits a tight budget to a backend whose every tenth call is three times
    slower; routing on the recent p99 does not. Bounded (``size`` samples); a sorted copy is kept
    alongside, updated per sample in place (a bisect and a move of at most ``size`` pointers), so a
    quantile is one index and no sample ever sorts the window again.
    """

    size: int = 128
    samples: deque[float] = field(default_factory=deque)
    at: float = 0.0  # when the last sample came
    _ordered: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def update(self, sample: float, now: float = 0.0) -> None:
        self.at = now
        ordered = self._ordered
        if len(self.samples) >= self.size:
            del ordered[bisect.bisect_left(ordered, self.samples.popleft())]
        self.samples.append(sample)
        bisect.insort(ordered, sample)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile of the window; None while it is empty."""
        ordered = self._ordered
        if not ordered:
            return None
        rank = max(math.ceil(q * len(ordered)) - 1, 0)
        return ordered[min(rank, len(ordered) - 1)]

    def decayed(self, q: float, now: float, decay_s: float) -> float | None:
        """The quantile, fading towards zero while no sample comes (as ``PeakEwma.decayed``): a
        backend kept out by one bad stretch is tried again, and its window refreshed."""
        value = self.quantile(q)
        if value is None or decay_s <= 0 or now <= self.at:
            return value
        return value * math.exp(-(now - self.at) / decay_s)
