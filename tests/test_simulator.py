"""The routing simulator runs the gateway's own router and batcher under virtual time (small runs)."""

from __future__ import annotations

import pytest

from bench.simulator import BASELINES, POLICIES, markdown, simulate, targets


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {p: simulate(p, requests=4000, rate=2000.0, seed=3) for p in POLICIES}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_is_answered_in_every_run(results: dict, policy: str) -> None:
    assert results[policy]["lost"] == 0
    assert 0.0 < results[policy]["slo_attainment"] <= 1.0


@pytest.mark.parametrize("policy", [p for p in POLICIES if p not in BASELINES])
def test_no_railgate_policy_ever_breaches_residency(results: dict, policy: str) -> None:
    assert results[policy]["residency_breaches"] == 0


def test_cheapest_pays_less_than_nearest_and_meets_more_budgets_than_cheapest_only(results: dict) -> None:
    assert results["cheapest"]["cost_per_1k"] < results["nearest"]["cost_per_1k"]
    assert results["cheapest"]["slo_attainment"] > results["cheapest-only"]["slo_attainment"]


def test_reports_render(results: dict) -> None:
    table = markdown(list(results.values()))
    assert table.count("\n") == len(POLICIES) + 1
    assert "residency breaches" in targets(list(results.values()))
