"""Outlier ejection, the circuit breaker and the retry budget, under a fake clock."""

from __future__ import annotations

import pytest

from gateway.routing.forward import RetryBudget
from railcore.breaker import Breaker, BreakerPolicy, BreakerState

POLICY = BreakerPolicy(failures_to_eject=3, base_ejection_s=1.0, max_ejection_s=4.0, slow_start_s=10.0)


def test_consecutive_failures_eject_the_hub() -> None:
    b = Breaker(POLICY)
    assert not b.on_failure(0.0) and not b.on_failure(0.1)
    assert b.on_failure(0.2)
    assert b.state is BreakerState.OPEN and b.share(0.5) == 0.0


def test_a_success_resets_the_failure_count() -> None:
    b = Breaker(POLICY)
    b.on_failure(0.0)
    b.on_failure(0.0)
    b.on_success(0.0)
    assert not b.on_failure(0.0)
    assert b.state is BreakerState.CLOSED


def test_after_the_backoff_one_trial_batch_goes_through() -> None:
    b = Breaker(POLICY)
    b.eject(0.0)
    assert b.share(0.99) == 0.0
    assert b.share(1.0) == 1.0 and b.state is BreakerState.HALF_OPEN
    b.on_send(1.0)
    assert b.share(1.0) == 0.0, "a second batch must wait for the trial's outcome"


def test_failed_trial_ejects_again_for_twice_as_long_up_to_the_cap() -> None:
    b = Breaker(POLICY)
    b.eject(0.0)  # 1 s
    b.share(1.0)
    assert b.on_failure(1.0)
    assert b.open_until == pytest.approx(3.0)  # 2 s
    b.share(3.0)
    b.on_failure(3.0)
    assert b.open_until == pytest.approx(7.0)  # 4 s
    b.share(7.0)
    b.on_failure(7.0)
    assert b.open_until == pytest.approx(11.0)  # capped at 4 s
    assert b.ejections == 4


def test_successful_trial_closes_and_the_hub_ramps_up_slowly() -> None:
    b = Breaker(POLICY)
    b.eject(0.0)
    b.share(1.0)
    b.on_send(1.0)
    assert b.on_success(1.5)
    assert b.state is BreakerState.CLOSED
    assert b.share(1.5) == pytest.approx(0.1)
    assert b.share(6.5) == pytest.approx(0.5)
    assert b.share(11.5) == 1.0
    b.eject(12.0)
    assert b.open_until == pytest.approx(13.0), "a success resets the back-off"


def test_retry_budget_allows_a_minimum_then_a_share_of_active_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_concurrent=3)
    assert [budget.try_acquire(active_requests=5) for _ in range(4)] == [True, True, True, False]
    assert budget.try_acquire(active_requests=100)  # 20% of 100 = 20
    budget.release()
    assert budget.in_use == 3
