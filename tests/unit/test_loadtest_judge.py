"""The load test's verdict on a reply: a deadline miss is the gateway's (its own X-Gateway-Ms past the
budget, or its 504), never the load generator's lateness, which is reported on its own."""

from __future__ import annotations

from loadtests import stats


def test_a_reply_the_gateway_made_in_time_is_no_miss_however_late_the_generator_read_it():
    assert stats.judge(200, 30.0, 25.0, gateway_ms=8.0) is None
    assert stats.generator_late_ms(200, 30.0, 25.0, gateway_ms=8.0) == 22.0


def test_a_reply_the_gateway_made_past_the_budget_is_a_deadline_miss():
    failure = stats.judge(200, 30.0, 25.0, gateway_ms=27.0)
    assert failure is not None and failure.kind == stats.DEADLINE and "gateway" in failure.message
    assert stats.generator_late_ms(200, 30.0, 25.0, gateway_ms=27.0) is None


def test_without_the_gateway_s_time_the_client_s_clock_judges():
    failure = stats.judge(200, 30.0, 25.0)
    assert failure is not None and failure.kind == stats.DEADLINE
    assert stats.judge(200, 20.0, 25.0) is None and stats.generator_late_ms(200, 20.0, 25.0, gateway_ms=5.0) is None


def test_generator_lateness_is_tallied_apart_from_the_outcomes():
    tallies = stats.RailgateStats()
    tallies.record_generator_late(22.0)
    tallies.record_generator_late(3.0)
    merged = stats.RailgateStats()
    merged.merge_wire(tallies.to_wire())
    assert merged.generator_late.total == 2 and merged.generator_late.max_ms == 22.0
    assert merged.total == 0  # no request outcome was recorded
