"""The pure core of the edge runtime: offload decision, circuit breaker, latency predictors, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.circuit import CircuitBreaker, CircuitState
from edge.config import parse_edge_config
from edge.offload import LOCAL, NONE, REASONS, REMOTE, Decision, Link, decide
from edge.predict import LocalPredictor, RemotePredictor
from railcore.errors import Cause
from railcore.settings import ConfigError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _decide(**overrides) -> Decision:
    args = {
        "policy": "auto",
        "budget_ms": 50.0,
        "local_ms": 5.0,
        "remote_ms": 20.0,
        "rtt_ms": 10.0,
        "link": Link.UP,
        "prefer_local": 0.0,
    }
    return decide(**{**args, **overrides})


@pytest.mark.parametrize(
    ("overrides", "where", "reason"),
    [
        ({}, REMOTE, "remote_fits"),
        ({"budget_ms": 10.0}, LOCAL, "remote_over_budget"),
        ({"budget_ms": 10.0, "local_ms": 30.0, "remote_ms": 20.0}, REMOTE, "remote_faster"),
        ({"budget_ms": 10.0, "local_ms": 30.0, "remote_ms": 40.0}, LOCAL, "remote_over_budget"),
        ({"prefer_local": 1.0}, LOCAL, "prefer_local"),
        ({"prefer_local": 0.2}, REMOTE, "remote_fits"),  # 5 ms > 0.2 * 20 ms
        ({"prefer_local": 100.0, "local_ms": 60.0}, REMOTE, "remote_fits"),  # local misses the budget
        ({"remote_ms": None}, REMOTE, "remote_unmeasured"),
        ({"remote_ms": None, "rtt_ms": 80.0}, LOCAL, "remote_over_budget"),
        ({"remote_ms": None, "rtt_ms": None}, REMOTE, "remote_unmeasured"),
        ({"link": Link.DOWN}, LOCAL, "circuit_open"),
        ({"link": Link.TRIAL, "budget_ms": 1.0}, REMOTE, "circuit_trial"),
        ({"link": Link.NONE}, LOCAL, "no_gateway"),
        ({"policy": "local"}, LOCAL, "policy_local"),
        ({"policy": "remote", "budget_ms": 1.0}, REMOTE, "policy_remote"),
        ({"policy": "remote", "link": Link.DOWN}, LOCAL, "circuit_open"),
        ({"local_ms": None}, REMOTE, "not_local"),
        ({"local_ms": None, "budget_ms": 1.0}, REMOTE, "not_local"),
        ({"local_ms": None, "link": Link.DOWN}, NONE, "unavailable"),
        ({"local_ms": None, "link": Link.NONE}, NONE, "unavailable"),
        ({"local_ms": None, "policy": "local"}, NONE, "unavailable"),
    ],
)
def test_offload_decision(overrides: dict, where: str, reason: str) -> None:
    decision = _decide(**overrides)
    assert decision == Decision(where, reason)
    assert decision.reason in REASONS


def test_circuit_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, backoff_s=1.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED and breaker.peek() is Link.UP
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and breaker.peek() is Link.DOWN
    assert not breaker.admit()


def test_circuit_lets_one_trial_through_after_the_backoff_and_closes_on_its_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=2.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.999)
    assert breaker.peek() is Link.DOWN and not breaker.admit()
    clock.advance(0.001)
    assert breaker.peek() is Link.TRIAL
    assert breaker.admit()
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.admit()  # one trial at a time
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.admit()


def test_a_failed_trial_doubles_the_backoff_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, max_backoff_s=3.0, clock=clock)
    breaker.record_failure()
    waits = []
    for _ in range(4):
        start = clock.now
        while not breaker.admit():
            clock.advance(0.25)
        waits.append(clock.now - start)
        breaker.record_failure()
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.advance(3.0)
    assert breaker.admit()
    breaker.record_success()
    breaker.record_failure()  # closed again: the back-off starts over
    clock.advance(1.0)
    assert breaker.admit()


def test_a_trial_that_never_reports_does_not_wedge_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.admit()  # the trial's caller vanishes
    clock.advance(0.5)
    assert not breaker.admit()
    clock.advance(0.5)
    assert breaker.admit()


def test_a_late_failure_while_open_does_not_extend_the_backoff() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(0.9)
    breaker.record_failure()  # a call admitted before the circuit opened
    clock.advance(0.1)
    assert breaker.admit()


def test_a_trial_refused_as_the_devices_fault_frees_the_trial_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    trial = breaker.admit()
    assert trial and breaker.peek() is Link.DOWN
    breaker.release(trial, Cause.REJECTED)  # e.g. a 403: nothing said about the gateway's health
    assert breaker.peek() is Link.TRIAL and breaker.state is CircuitState.HALF_OPEN
    assert breaker.admit()


def test_a_failure_of_a_call_admitted_before_the_circuit_opened_does_not_reopen_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    early = breaker.admit()
    breaker.record_failure(breaker.admit())
    clock.advance(1.0)
    trial = breaker.admit()
    breaker.record_failure(early)  # reported late, during the trial
    assert breaker.state is CircuitState.HALF_OPEN and breaker.opened == 1
    breaker.record_success(trial)
    assert breaker.peek() is Link.UP and breaker.retry_in_s() == 0.0


def test_local_predictor_scales_unmeasured_batch_sizes_from_the_nearest_measured() -> None:
    predictor = LocalPredictor()
    assert predictor.predict("digits", 1) is None
    predictor.observe("digits", 1, 0.1)
    predictor.observe("digits", 8, 0.4)
    assert predictor.predict("digits", 1) == pytest.approx(0.1)
    assert predictor.predict("digits", 4) == pytest.approx(0.4)  # linear from batch 1
    assert predictor.predict("digits", 16) == pytest.approx(0.8)  # linear from batch 8
    predictor.observe("digits", 1, 1.0)  # a slow run counts at once ...
    assert predictor.predict("digits", 1) == pytest.approx(1.0)
    predictor.observe("digits", 1, 0.1)  # ... a fast one only partly
    assert 0.1 < predictor.predict("digits", 1) < 1.0
    predictor.forget("digits")
    assert predictor.predict("digits", 1) is None


def test_remote_predictor_splits_the_round_trip_from_the_gateways_reported_times() -> None:
    predictor = RemotePredictor(stale_s=10.0)
    assert predictor.predict("digits", now=0.0) is None
    predictor.observe("digits", total_ms=12.0, queue_ms=1.0, backend_ms=4.0, now=0.0)
    assert predictor.rtt.value == pytest.approx(7.0)
    assert predictor.predict("digits", now=5.0) == pytest.approx(12.0)
    assert predictor.predict("vision", now=5.0) is None  # per model
    assert predictor.predict("digits", now=10.5) is None  # stale: measure again
    predictor.observe_rtt(20.0)  # a probe sees a slower backbone
    predictor.observe("digits", total_ms=25.0, queue_ms=1.0, backend_ms=4.0, now=11.0)
    assert predictor.predict("digits", now=11.0) == pytest.approx(25.0)


def test_a_cut_remote_call_counts_as_at_least_that_slow() -> None:
    predictor = RemotePredictor()
    predictor.observe_rtt(2.0)
    predictor.observe_cut("digits", elapsed_ms=30.0, now=0.0)
    assert predictor.predict("digits", now=0.0) >= 30.0


def test_the_remote_predictor_keeps_a_bounded_number_of_models() -> None:
    """A cut call creates an entry for its model, and the name is the caller's: made-up names over a
    slow link must not grow the table without bound. The least recently measured goes first."""
    predictor = RemotePredictor(max_models=8)
    predictor.observe_rtt(2.0)
    predictor.observe_cut("digits", elapsed_ms=30.0, now=0.0)
    for i in range(1000):
        predictor.observe_cut(f"made-up-{i}", elapsed_ms=30.0, now=0.0)
        if i % 4 == 0:
            predictor.observe("digits", total_ms=5.0, queue_ms=0.0, backend_ms=1.0, now=0.0)  # still in use
    assert predictor.models() <= 8
    assert predictor.predict("digits", now=0.0) is not None
    assert predictor.predict("made-up-0", now=0.0) is None  # evicted


def test_edge_config_defaults_and_types() -> None:
    config = parse_edge_config(
        {
            "gateway_url": "http://127.0.0.1:8000",
            "models": ["digits"],
            "policy": "local",
            "budget_ms": 20,
            "threads": {"intra_op": 2},
            "listen": {"unix": "/tmp/edge.sock"},
        }
    )
    assert config.models == ("digits",) and config.budget_ms == 20.0 and config.threads.intra_op == 2
    assert config.listen.unix == "/tmp/edge.sock" and config.sync.enabled


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gateway": "http://x:1"}, "gateway: unknown key"),
        ({"sync": {"every_s": 5}}, "sync.every_s: unknown key"),
        ({"policy": "nearest"}, "policy: unknown policy 'nearest'"),
        ({"budget_ms": "fast"}, "budget_ms: expected a number"),
        ({"budget_ms": 0}, "budget_ms: must be > 0"),
        ({"threads": {"intra_op": 0}}, "threads.intra_op: must be > 0"),
        ({"gateway_url": "127.0.0.1:8000"}, "gateway_url: expected http://host:port"),
        ({"models": ["digits", "digits"]}, "models: a model is listed twice"),
        ({"prefer_local": -1}, "prefer_local: must be >= 0"),
        ({"circuit": {"backoff_s": 5, "max_backoff_s": 1}}, "circuit.max_backoff_s: must be >= circuit.backoff_s"),
        ({"providers": "CPUExecutionProvider"}, "providers: expected a list"),
    ],
)
def test_edge_config_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_edge_config(raw)


def test_the_example_edge_config_is_valid_and_shows_the_defaults() -> None:
    from edge.config import EdgeConfig, load_edge_config

    example = load_edge_config(Path(__file__).resolve().parents[2] / "deploy" / "edge.yaml")
    assert example.models == ("digits", "anomaly") and example.gateway_url == "http://127.0.0.1:8000"
    defaults = EdgeConfig()
    assert (example.threads, example.batching, example.sync, example.circuit, example.listen) == (
        defaults.threads, defaults.batching, defaults.sync, defaults.circuit, defaults.listen,
    )  # fmt: skip
