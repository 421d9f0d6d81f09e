"""The clairvoyant baseline: each request on the cheapest hub whose realised latency meets its budget.

It reads the same world the simulated hubs serve: the request's own service-time noise at each hub,
the outages and the slowdown. It sends each request alone, at the first moment at or after its
arrival when the hub is up, with no queue ahead of it, and pays the lowest price the hub's tariff
asks at any minute the answer could come back in. No online policy can do better on any request:
a batch runs as long as its slowest member would alone, waits for a free slot, and is sent no
earlier than its members arrive. So the clairvoyant answers in time every request any policy
answers in time, and costs no more for it: each policy's cost divided by the clairvoyant's cost of
the same requests is at least 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bench.sim.scenario import Workload, percentile_ms

TOLERANCE_S = 1e-9  # float rounding in the virtual clock: ties go to the clairvoyant


@dataclass(frozen=True, slots=True)
class Oracle:
    feasible: np.ndarray  # some allowed hub's realised latency meets the request's budget
    cost: np.ndarray  # what the request costs on its cheapest such hub (inf where none)
    hub: np.ndarray  # that hub's index (-1 where none)
    latency: np.ndarray  # its realised latency there (nan where none)
    wall_s: float

    def cost_of(self, requests: np.ndarray) -> float:
        """The clairvoyant's bill for the requests selected by the boolean mask ``requests``."""
        return float(self.cost[requests & self.feasible].sum())

    def report(self, world: Workload) -> dict[str, object]:
        n, ok = len(self.feasible), self.feasible
        served = int(ok.sum())
        names = [h.name for h in world.hubs]
        counts = np.bincount(self.hub[ok], minlength=len(names))
        return {
            "policy": "clairvoyant",
            "requests": n,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.wall_s, 2),
            "requests_per_s": None,
            "slo_attainment": served / n if n else 0.0,
            "errors_or_late": n - served,
            "errors_by_status": {"no hub could": n - served} if n - served else {},
            "lost": 0,
            "wrong_rows": 0,
            "residency_breaches": 0,
            "retries": 0,
            "cost_per_1k": self.cost_of(ok) / max(served, 1) * 1000,
            "cost_ratio": 1.0,
            "beyond_oracle": 0,
            "p50_ms": percentile_ms(self.latency[ok], 50),
            "p99_ms": percentile_ms(self.latency[ok], 99),
            "unrestricted_p99_ms": percentile_ms(self.latency[ok & (world.residency == 0)], 99),
            "misses_by_budget_ms": {},
            "hub_share": {names[h]: round(int(c) / max(served, 1), 4) for h, c in enumerate(counts) if c},
            "hub_p99_ms": {},
        }


def clairvoyant(world: Workload) -> Oracle:
    t0 = time.perf_counter()
    n = len(world)
    deadline = world.deadline
    prices, allowed = world.price_table(), world.allowed()
    best = np.full(n, np.inf)
    hub = np.full(n, -1, np.int8)
    latency = np.full(n, np.nan)
    for h, model in enumerate(world.hubs):
        sent = model.earliest_up(world.arrival)
        with np.errstate(invalid="ignore"):  # inf (never up again) times a slowdown
            back = sent + model.rtt_s + model.base_s * world.noise[:, h] * model.slowdown(sent)
        fits = np.flatnonzero(allowed[world.residency, h] & (back <= deadline + TOLERANCE_S))
        cost = _cheapest(prices[h], world.minutes(back[fits]), world.minutes(deadline[fits])) / 1000
        better = cost < best[fits]
        chosen = fits[better]
        best[chosen], hub[chosen], latency[chosen] = cost[better], h, back[chosen] - world.arrival[chosen]
    return Oracle(np.isfinite(best), best, hub, latency, time.perf_counter() - t0)


def _cheapest(table: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """For each request, the lowest price in ``table`` (by minute of day) from ``first`` to ``last``."""
    out = table[first % 1440]
    span = int((last - first).max()) if len(first) else 0
    for k in range(1, min(span, 1439) + 1):
        minute = first + k
        out = np.where(minute <= last, np.minimum(out, table[minute % 1440]), out)
    return out
