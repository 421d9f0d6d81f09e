"""Routing policies as pure functions: snapshots in, a choice and its reason out."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest

from gateway.routing.policy import POLICIES, Route, choose
from gateway.routing.state import BackendView, PeakEwma
from railcore.estimators import TailWindow


def hub(
    name: str, ms: float | None, price: float = 1.0, carbon: float = 100.0, inflight: int = 0, region: str = "west"
):
    return BackendView(name, "hub", None if ms is None else ms / 1000, inflight, 8, region, price, carbon)


LOCAL = BackendView("local", "local", 0.004, 0, 2, "local", 0.0, 0.0)
NEAR = hub("near", 10, price=3.0, carbon=300)
MID = hub("mid", 30, price=2.0, carbon=20)
FAR = hub("far", 60, price=1.0, carbon=50)
TABLE = [NEAR, MID, FAR]


def pick(policy: str, budget_ms: float = 100, table=TABLE, seed: int = 0, turn: int = 0):
    return choose(table, budget_ms / 1000, policy, random.Random(seed), turn)


@pytest.mark.parametrize(
    ("policy", "budget_ms", "expected", "reason"),
    [
        ("nearest", 100, "near", "lowest predicted latency"),
        ("cheapest", 100, "far", "lowest price within budget"),
        ("cheapest", 40, "mid", "lowest price within budget"),
        ("cheapest", 5, "near", "no hub fits the budget, fastest"),
        ("greenest", 100, "mid", "lowest carbon within budget"),
        ("greenest", 15, "near", "lowest carbon within budget"),
    ],
)
def test_policy_picks_under_the_budget(policy: str, budget_ms: float, expected: str, reason: str) -> None:
    decision = pick(policy, budget_ms)
    assert decision.backend.name == expected
    assert reason in decision.reason


def test_balanced_weighs_price_against_latency() -> None:
    assert choose(TABLE, 0.1, "balanced", random.Random(0), balance_weight=1.0).backend.name == "far"
    assert choose(TABLE, 0.1, "balanced", random.Random(0), balance_weight=0.0).backend.name == "near"


def test_round_robin_cycles_through_every_hub() -> None:
    assert [pick("round_robin", turn=t).backend.name for t in range(6)] == ["far", "mid", "near"] * 2


def test_least_loaded_takes_the_hub_with_fewest_batches_per_capacity() -> None:
    table = [hub("a", 10, inflight=6), hub("b", 50, inflight=1), hub("c", 5, inflight=7)]
    assert pick("least_loaded", table=table).backend.name == "b"


def test_near_ties_are_spread_by_two_choices_not_herded() -> None:
    """Three hubs within 5% of each other: none takes every batch, the busiest takes fewest."""
    table = [hub("a", 10.0, inflight=0), hub("b", 10.2, inflight=0), hub("c", 10.1, inflight=5)]
    rng = random.Random(42)
    counts = Counter(choose(table, 0.1, "nearest", rng).backend.name for _ in range(3000))
    assert set(counts) <= {"a", "b", "c"} and counts["a"] > 500 and counts["b"] > 500
    assert counts["c"] < counts["a"] and counts["c"] < counts["b"]


def test_unmeasured_hub_counts_as_fastest_so_it_gets_measured() -> None:
    assert pick("nearest", table=[NEAR, hub("new", None)]).backend.name == "new"


def test_local_serves_when_no_hub_fits_but_it_does() -> None:
    decision = pick("cheapest", budget_ms=5, table=[*TABLE, LOCAL])
    assert decision.backend.name == "local" and "no hub fits" in decision.reason


def test_hubs_are_preferred_over_local_when_they_fit() -> None:
    assert pick("nearest", budget_ms=100, table=[*TABLE, LOCAL]).backend.kind == "hub"


def test_only_local_left_serves_locally() -> None:
    assert pick("nearest", table=[LOCAL]).backend.name == "local"


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_answers_from_the_candidates_it_was_given(policy: str) -> None:
    assert pick(policy).backend in TABLE


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        pick("fastest-ever")


def test_route_residency_allows_only_its_regions() -> None:
    route = Route("nearest", frozenset({"west"}))
    assert route.allows("west") and not route.allows("east")
    assert Route().allows("anywhere")


def test_peak_ewma_jumps_up_at_once_and_decays_down_slowly() -> None:
    ewma = PeakEwma(alpha=0.5)
    assert ewma.update(0.010) == 0.010
    assert ewma.update(0.100) == 0.100
    assert ewma.update(0.020) == pytest.approx(0.060)


# -- routing on the tail: a hub is chosen for a budget only if its recent high percentile fits ------


def tailed(name: str, kind: str, mean_ms: float, tail_ms: float | None) -> BackendView:
    region = "local" if kind == "local" else "west"
    return BackendView(
        name, kind, mean_ms / 1000, 0, 8, region, 1.0, 100.0, None if tail_ms is None else tail_ms / 1000
    )


def test_a_hub_whose_tail_exceeds_the_budget_loses_to_local_though_its_mean_fits() -> None:
    table = [tailed("h1", "hub", 5, 30), tailed("local", "local", 1, 2)]
    decision = choose(table, 0.010, "nearest", random.Random(0))
    assert decision.backend.name == "local" and "no hub fits" in decision.reason


def test_a_hub_whose_tail_fits_keeps_the_request() -> None:
    table = [tailed("h1", "hub", 5, 8), tailed("local", "local", 1, 2)]
    assert choose(table, 0.010, "nearest", random.Random(0)).backend.name == "h1"


@pytest.mark.parametrize(("hub_tail_ms", "local_tail_ms", "expected"), [(30, 12, "local"), (12, 30, "h1")])
def test_when_nothing_fits_the_backend_with_the_shorter_tail_serves(
    hub_tail_ms: float, local_tail_ms: float, expected: str
) -> None:
    table = [tailed("h1", "hub", 5, hub_tail_ms), tailed("local", "local", 1, local_tail_ms)]
    assert choose(table, 0.010, "nearest", random.Random(0)).backend.name == expected


def test_without_a_tail_a_backend_is_judged_on_its_prediction() -> None:
    table = [tailed("h1", "hub", 5, None), tailed("local", "local", 1, None)]
    assert choose(table, 0.010, "nearest", random.Random(0)).backend.name == "h1"


def test_tail_window_keeps_only_its_last_samples_and_reads_a_nearest_rank_quantile() -> None:
    window = TailWindow(size=100)
    for i in range(1000):
        window.update(0.001 * (i % 100), now=float(i))
    assert len(window) == 100, "bounded"
    assert window.quantile(0.99) == pytest.approx(0.098)
    assert window.quantile(0.5) == pytest.approx(0.049)
    assert TailWindow().quantile(0.99) is None
    assert window.decayed(0.99, now=999.0 + 10.0, decay_s=10.0) == pytest.approx(0.098 / 2.718281828, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_tail_window_quantiles_are_those_of_its_last_samples_sorted(seed: int) -> None:
    """The window's sorted copy is kept up to date per sample, not re-sorted: with repeats, ties and
    evictions of equal values it must still read as a sort of exactly the last ``size`` samples."""
    rng = random.Random(seed)
    window = TailWindow(size=16)
    seen: list[float] = []
    for i in range(300):
        sample = rng.choice([0.001, 0.002, 0.005]) if rng.random() < 0.5 else rng.random()
        window.update(sample, now=float(i))
        seen.append(sample)
        last = sorted(seen[-16:])
        for q in (0.0, 0.5, 0.95, 0.99, 1.0):
            assert window.quantile(q) == last[min(max(math.ceil(q * len(last)) - 1, 0), len(last) - 1)]


@pytest.mark.parametrize("epoch_s", [0.0, 59.9, 60.0, 3599.0, 86399.9, 86400.0, 1_796_300_000.5, 1_767_225_540.0])
def test_the_minute_of_day_for_tariffs_is_gmtimes_hour_and_minute(monkeypatch, epoch_s: float) -> None:
    from gateway.routing import router as router_module

    at = time.gmtime(epoch_s)
    monkeypatch.setattr(router_module.time, "time", lambda: epoch_s)
    assert router_module._utc_minute() == at.tm_hour * 60 + at.tm_min
