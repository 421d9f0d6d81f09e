"""Routing policies: pure functions from backend snapshots to a choice and its reason.

No I/O and no clock: the router hands in snapshots, the budget, and a random source, so the same
code runs in the gateway and under test. Hubs are preferred: they are the utility the edge buys
compute from. The gateway's own ``local`` backend serves when no hub can, or when no hub fits the
budget and the local one does, or when nothing fits and local's tail is the shortest. A backend fits
when its tail (a high quantile of its recent calls, plus a margin: ``BackendView.tail_s``) is within
the budget; a mean-ish prediction would fit a 10 ms budget to a hub whose p99 is 30 ms.

Near-ties are broken by power-of-two-choices on load with random picks, so many gateways (or many
batches) seeing the same table do not herd onto one hub.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from gateway.backends import BackendKind
from gateway.routing.state import BackendView


class Policy(enum.StrEnum):
    """How a batch's hub is chosen (the ``X-Route-Policy`` header and ``routing.default_policy``)."""

    NEAREST = "nearest"
    CHEAPEST = "cheapest"
    BALANCED = "balanced"
    GREENEST = "greenest"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"


POLICIES: tuple[Policy, ...] = tuple(Policy)
# Scores within this fraction of the best (or this many seconds, for latencies) count as a tie.
NEAR_TIE_FRACTION = 0.05
NEAR_TIE_ABS_S = 0.0005


@dataclass(frozen=True, slots=True)
class Route:
    """A request's routing constraints; part of its batch key, so batches never mix them."""

    policy: Policy = Policy.NEAREST
    regions: frozenset[str] | None = None  # allowed regions (residency); None: anywhere

    def allows(self, region: str) -> bool:
        return self.regions is None or region in self.regions


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Decision:
    backend: BackendView
    reason: str


def _latency(view: BackendView) -> float:
    # An unmeasured backend counts as fastest, so that it gets measured.
    return view.predicted_s if view.predicted_s is not None else 0.0


def _tail(view: BackendView) -> float:
    return view.tail_s if view.tail_s is not None else _latency(view)


def _fits(view: BackendView, budget_s: float) -> bool:
    return _tail(view) <= budget_s


def _load(view: BackendView) -> float:
    return view.inflight / max(view.capacity, 1)


def _pick(views: list[BackendView], score: Callable[[BackendView], float], rng: random.Random) -> BackendView:
    """Lowest score; among near-ties, the less loaded of two picked at random."""
    best = min(score(v) for v in views)
    tied = [v for v in views if score(v) <= best + max(abs(best) * NEAR_TIE_FRACTION, NEAR_TIE_ABS_S)]
    if len(tied) == 1:
        return tied[0]
    a, b = rng.sample(tied, 2)
    if _load(a) == _load(b):
        return a
    return a if _load(a) < _load(b) else b


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class _Table:
    """What one choice sees: the hubs, those whose prediction fits the budget, and the tie-breakers."""

    hubs: list[BackendView]
    fitting: list[BackendView]
    rng: random.Random
    turn: int
    balance_weight: float


def _round_robin(t: _Table) -> Decision:
    ordered = sorted(t.hubs, key=lambda h: h.name)
    return Decision(ordered[t.turn % len(ordered)], "round_robin: next in turn")


def _least_loaded(t: _Table) -> Decision:
    return Decision(_pick(t.hubs, _load, t.rng), "least_loaded: fewest batches in flight per capacity")


def _nearest(t: _Table) -> Decision:
    return Decision(_pick(t.hubs, _latency, t.rng), "nearest: lowest predicted latency")


def _cheapest(t: _Table) -> Decision:
    return Decision(_pick(t.fitting, lambda h: h.price_per_1k, t.rng), "cheapest: lowest price within budget")


def _greenest(t: _Table) -> Decision:
    return Decision(_pick(t.fitting, lambda h: h.carbon_g_per_kwh, t.rng), "greenest: lowest carbon within budget")


def _balanced(t: _Table) -> Decision:
    max_price = max(h.price_per_1k for h in t.fitting) or 1.0
    max_latency = max(_latency(h) for h in t.fitting) or 1.0
    w = t.balance_weight

    def score(h: BackendView) -> float:
        return w * h.price_per_1k / max_price + (1 - w) * _latency(h) / max_latency

    return Decision(_pick(t.fitting, score, t.rng), "balanced: price and latency weighed within budget")


# Each policy's rule, and whether it chooses among the hubs that fit the budget (when none fits,
# such a policy takes the fastest hub instead).
_RULES: dict[str, tuple[Callable[[_Table], Decision], bool]] = {
    Policy.ROUND_ROBIN: (_round_robin, False),
    Policy.LEAST_LOADED: (_least_loaded, False),
    Policy.NEAREST: (_nearest, False),
    Policy.CHEAPEST: (_cheapest, True),
    Policy.GREENEST: (_greenest, True),
    Policy.BALANCED: (_balanced, True),
}


def choose(
    candidates: list[BackendView],
    budget_s: float,
    policy: str,
    rng: random.Random,
    turn: int = 0,
    balance_weight: float = 0.5,
) -> Decision:
    """Pick the backend for one batch. ``turn`` counts batches, for round_robin."""
    if not candidates:
        raise ValueError("no candidates")
    hubs = [c for c in candidates if c.kind == BackendKind.HUB]
    local = next((c for c in candidates if c.kind == BackendKind.LOCAL), None)
    if not hubs:
        assert local is not None
        return Decision(local, "local: no hub can serve")
    fitting = [h for h in hubs if _fits(h, budget_s)]
    if not fitting and local is not None:
        if _fits(local, budget_s):
            return Decision(local, "local: no hub fits the budget")
        if _tail(local) < min(_tail(h) for h in hubs):
            return Decision(local, "local: nothing fits the budget, local's tail is the shortest")
    try:
        rule, within_budget = _RULES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}") from None
    if within_budget and not fitting:
        return Decision(_pick(hubs, _latency, rng), f"{policy}: no hub fits the budget, fastest")
    return rule(_Table(hubs, fitting, rng, turn, balance_weight))
