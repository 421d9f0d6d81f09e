"""Live state per backend and model: latency as an EWMA that rises fast and falls slowly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PeakEwma:
    """An EWMA that jumps straight to a worse sample and decays towards better ones.

    Peak-sensitive (as Finagle's and Linkerd's load balancers): a hub that turns slow is avoided at
    once; one that recovers earns its traffic back over a few samples.
    """

    alpha: float = 0.2
    value: float | None = None

    def update(self, sample: float) -> float:
        if self.value is None or sample > self.value:
            self.value = sample
        else:
            self.value += self.alpha * (sample - self.value)
        return self.value


@dataclass(frozen=True, slots=True)
class BackendView:
    """A snapshot of one candidate backend, as a routing policy sees it."""

    name: str
    kind: str  # hub | local
    predicted_s: float | None  # None: never measured for this model
    inflight: int = 0
    capacity: int = 1  # batches it takes at once (max_inflight)
    region: str = "default"
    price_per_1k: float = 0.0
    carbon_g_per_kwh: float = 0.0
