"""The one circuit breaker (railcore.breaker), pure, under explicit time: every transition, the
half-open trial that never reports, stale failures and the back-off's cap. The gateway's router and
the edge's link both run it (tests/unit/test_health.py and tests/unit/test_edge_offload.py test them there)."""

from __future__ import annotations

import pytest

from railcore.breaker import Breaker, BreakerPolicy, BreakerState, Ticket
from railcore.errors import Cause

POLICY = BreakerPolicy(failures_to_eject=1, base_ejection_s=1.0, max_ejection_s=8.0, slow_start_s=0.0)


def ejected_at(t: float, policy: BreakerPolicy = POLICY) -> Breaker:
    """A breaker that was closed and was just ejected at ``t`` (a 1 s back-off)."""
    b = Breaker(policy)
    assert b.on_failure(t, b.admit(t))
    return b


def half_open_trial(b: Breaker, now: float) -> Ticket:
    ticket = b.admit(now)
    assert ticket is not None and ticket.trial, "the back-off is over: the trial is granted"
    assert b.state_at(now) is BreakerState.HALF_OPEN
    return ticket


def test_a_closed_breaker_admits_every_call_on_one_shared_ticket() -> None:
    b = Breaker(POLICY)
    first, second = b.admit(0.0), b.admit(0.0)
    assert first is second and first is not None and not first.trial, "no allocation per call"


def test_open_admits_nothing_until_the_backoff_is_over() -> None:
    b = ejected_at(0.0)
    assert b.state is BreakerState.OPEN
    assert b.admit(0.999) is None and b.share(0.999) == 0.0
    assert b.retry_at() == 1.0
    half_open_trial(b, 1.0)


def test_half_open_lets_one_trial_go_at_a_time() -> None:
    b = ejected_at(0.0)
    half_open_trial(b, 1.0)
    assert b.admit(1.1) is None and b.share(1.1) == 0.0
    assert b.trial_in_flight


def test_a_successful_trial_closes_and_resets_the_backoff() -> None:
    b = ejected_at(0.0)
    trial = half_open_trial(b, 1.0)
    assert b.on_success(1.2, trial)
    assert b.state is BreakerState.CLOSED and not b.trial_in_flight
    assert b.on_failure(2.0, b.admit(2.0))
    assert b.backoff_s == 1.0, "back to the base back-off"


def test_a_failed_trial_ejects_again_for_twice_as_long() -> None:
    b = ejected_at(0.0)
    trial = half_open_trial(b, 1.0)
    assert b.on_failure(1.5, trial, Cause.UNREACHABLE)
    assert b.state is BreakerState.OPEN and b.open_until == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("how", "cause"),
    [("cancelled as a hedge loser", None), ("answered 4xx", Cause.REJECTED), ("cut before the hub's p95", None)],
)
def test_a_trial_that_says_nothing_about_the_hub_frees_its_slot_at_once(how: str, cause: Cause | None) -> None:
    b = ejected_at(0.0)
    trial = half_open_trial(b, 1.0)
    b.release(trial, cause)
    assert b.state_at(1.1) is BreakerState.HALF_OPEN, f"a trial {how} neither closes nor ejects"
    assert b.share(1.1) == 1.0
    assert b.ejections == 1
    half_open_trial(b, 1.1)


def test_the_hubs_4xx_is_counted_but_never_held_against_it() -> None:
    b = Breaker(POLICY)
    for _ in range(5):
        b.release(b.admit(0.0), Cause.REJECTED)
    assert b.failures_by_cause == {Cause.REJECTED: 5}
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0


def test_a_trial_that_never_reports_is_given_up_after_the_backoff() -> None:
    b = ejected_at(0.0)
    half_open_trial(b, 1.0)  # its caller vanishes
    assert b.admit(1.999) is None
    assert b.retry_at() == 2.0
    half_open_trial(b, 2.0)


def test_the_trial_timeout_can_be_set_apart_from_the_backoff() -> None:
    policy = BreakerPolicy(failures_to_eject=1, base_ejection_s=1.0, trial_timeout_s=5.0, slow_start_s=0.0)
    b = ejected_at(0.0, policy)
    half_open_trial(b, 1.0)
    assert b.admit(5.999) is None
    half_open_trial(b, 6.0)


def test_a_late_release_of_a_given_up_trial_does_not_free_the_next_one() -> None:
    b = ejected_at(0.0)
    lost = half_open_trial(b, 1.0)
    current = half_open_trial(b, 2.0)
    b.release(lost)
    assert b.admit(2.1) is None, "the second trial still holds the slot"
    b.release(current)
    half_open_trial(b, 2.1)


def test_a_late_success_of_a_given_up_trial_still_closes() -> None:
    b = ejected_at(0.0)
    lost = half_open_trial(b, 1.0)
    half_open_trial(b, 2.0)
    assert b.on_success(2.5, lost), "the hub answered: it is back"
    assert b.state is BreakerState.CLOSED


def test_calls_sent_before_the_ejection_fail_without_ejecting_again() -> None:
    """A dead hub's batches already on their way all fail after it is ejected: one ejection, not one each."""
    b = Breaker(POLICY)
    in_flight = [b.admit(0.0) for _ in range(50)]
    assert b.on_failure(0.1, in_flight[0])
    late_while_open = [b.on_failure(0.2, t, Cause.UNREACHABLE) for t in in_flight[1:25]]
    trial = half_open_trial(b, 1.1)
    late_while_half_open = [b.on_failure(1.2, t, Cause.UNREACHABLE) for t in in_flight[25:]]
    assert not any(late_while_open + late_while_half_open)
    assert b.ejections == 1 and b.ejections_in_a_row == 1 and b.open_until == pytest.approx(1.1)
    assert b.failures_by_cause == {Cause.ERROR: 1, Cause.UNREACHABLE: 49}, "counted all the same"
    assert b.on_success(1.3, trial)


def test_a_stale_failure_after_the_hub_is_back_does_not_count_towards_ejecting_it() -> None:
    policy = BreakerPolicy(failures_to_eject=2, base_ejection_s=1.0, slow_start_s=0.0)
    b = Breaker(policy)
    stale = b.admit(0.0)
    b.eject(0.0)
    b.on_success(1.0, half_open_trial(b, 1.0))
    assert not b.on_failure(1.1, stale)
    assert b.consecutive_failures == 0
    assert not b.on_failure(1.2, b.admit(1.2)), "one fresh failure of two"


def test_a_failure_without_a_ticket_while_open_changes_nothing() -> None:
    b = ejected_at(0.0)
    assert not b.on_failure(0.9)
    assert b.open_until == 1.0 and b.ejections == 1


def test_a_success_closes_the_breaker_from_open_too() -> None:
    b = ejected_at(0.0)
    assert b.on_success(0.5)
    assert b.state is BreakerState.CLOSED and b.admit(0.5) is not None


@pytest.mark.parametrize("in_a_row", [0, 3, 64, 65, 1_000, 10**9])
def test_the_backoff_is_capped_without_overflowing(in_a_row: int) -> None:
    assert POLICY.ejection_s(in_a_row) == min(2.0**in_a_row if in_a_row < 64 else 8.0, 8.0)


def test_a_hub_down_for_good_reaches_the_cap_and_stays_there() -> None:
    """More failed trials in a row than a float's exponent holds: an uncapped 2**n raised
    OverflowError past 1,023 (as ``python -m bench.simulator --requests 200000`` did)."""
    b = ejected_at(0.0)
    now = 0.0
    for _ in range(5_000):
        now = b.open_until
        b.on_failure(now, half_open_trial(b, now))
    assert b.backoff_s == POLICY.max_ejection_s
    assert b.ejections == 5_001


def test_slow_start_ramps_a_returning_hubs_share() -> None:
    b = ejected_at(0.0, BreakerPolicy(failures_to_eject=1, base_ejection_s=1.0, slow_start_s=10.0))
    b.on_success(1.0, half_open_trial(b, 1.0))
    assert [b.share(t) for t in (1.0, 6.0, 11.0, 20.0)] == pytest.approx([0.1, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    ("state", "gauge"), [(BreakerState.CLOSED, 0), (BreakerState.HALF_OPEN, 1), (BreakerState.OPEN, 2)]
)
def test_states_have_gauge_values(state: BreakerState, gauge: int) -> None:
    assert state.gauge == gauge and state == state.value
