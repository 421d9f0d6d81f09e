"""The edge's lean metric families: prometheus_client's exposition, cheaper children, no lost updates."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from edge.metrics import EdgeMetrics, LeanCounter, LeanHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without the _created samples (their timestamps differ by construction)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_the_lean_families_render_as_prometheus_clients_own() -> None:
    lean, real = CollectorRegistry(), CollectorRegistry()
    counters = [
        LeanCounter("railgate_edge_t_calls", "Calls", ["model", "served"], registry=lean),
        Counter("railgate_edge_t_calls", "Calls", ["model", "served"], registry=real),
    ]
    histograms = [
        LeanHistogram("railgate_edge_t_seconds", "Latency", ["model"], registry=lean, buckets=BUCKETS),
        Histogram("railgate_edge_t_seconds", "Latency", ["model"], registry=real, buckets=BUCKETS),
    ]
    for c in counters:
        c.labels("digits", "local").inc()
        c.labels("digits", "local").inc(2.5)
        c.labels("vision", "remote").inc()
    for h in histograms:
        for value in (0.0005, 0.001, 0.002, 0.5, 7.0):  # 0.001 sits on a bound: "le" puts it in that bucket
            h.labels("digits").observe(value)
    assert _exposition(lean) == _exposition(real)
    created = [line for line in generate_latest(lean).decode().splitlines() if line.startswith("railgate_edge_t_")]
    assert sum("_created{" in line for line in created) == 3  # one per child, as prometheus_client gives


def test_sample_values_read_back_through_the_registry() -> None:
    metrics = EdgeMetrics()
    metrics.decision("digits", "local", "no_gateway")
    metrics.decision("digits", "local", "no_gateway")
    metrics.local_batch.labels("digits").observe(3)
    get = metrics.registry.get_sample_value
    assert get("railgate_edge_decisions_total", {"model": "digits", "where": "local", "reason": "no_gateway"}) == 2
    assert get("railgate_edge_local_batch_size_bucket", {"model": "digits", "le": "2.0"}) == 0
    assert get("railgate_edge_local_batch_size_bucket", {"model": "digits", "le": "4.0"}) == 1
    assert get("railgate_edge_local_batch_size_count", {"model": "digits"}) == 1
    assert get("railgate_edge_local_batch_size_sum", {"model": "digits"}) == 3


def test_updates_from_many_threads_are_all_counted() -> None:
    registry = CollectorRegistry()
    counter = LeanCounter("railgate_edge_t_n", "n", ["model"], registry=registry)
    histogram = LeanHistogram("railgate_edge_t_h", "h", ["model"], registry=registry, buckets=BUCKETS)
    threads, each = 8, 5000

    def hammer() -> None:
        for _ in range(each):
            counter.labels("m").inc()
            histogram.labels("m").observe(0.05)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert registry.get_sample_value("railgate_edge_t_n_total", {"model": "m"}) == threads * each
    assert registry.get_sample_value("railgate_edge_t_h_count", {"model": "m"}) == threads * each
    assert registry.get_sample_value("railgate_edge_t_h_bucket", {"model": "m", "le": "0.01"}) == 0


def test_misuse_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LeanCounter("railgate_edge_t_c", "c", ["model", "where"], registry=registry)
    with pytest.raises(ValueError, match="model, where"):
        counter.labels("digits")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("digits", "local").inc(-1)
    with pytest.raises(ValueError, match="increasing"):
        LeanHistogram("railgate_edge_t_b", "b", ["model"], registry=registry, buckets=(1.0, 0.5))
    with pytest.raises(ValueError, match="Duplicated"):
        LeanCounter("railgate_edge_t_c", "again", ["model"], registry=registry)


def test_a_count_of_child_renders_as_a_counter_incremented_with_every_observation() -> None:
    """The runtime counts a call answered 200 once, in the latency histogram; the calls counter's 200 child
    reads that count. The exposition is prometheus_client's for a counter incremented beside each observe."""
    lean, real = CollectorRegistry(), CollectorRegistry()
    calls = LeanCounter("railgate_edge_t_calls", "Calls", ["model", "status"], registry=lean)
    latency = LeanHistogram("railgate_edge_t_seconds", "Latency", ["model"], registry=lean, buckets=BUCKETS)
    real_calls = Counter("railgate_edge_t_calls", "Calls", ["model", "status"], registry=real)
    real_latency = Histogram("railgate_edge_t_seconds", "Latency", ["model"], registry=real, buckets=BUCKETS)
    child = latency.labels("digits")
    calls.count_of(child, "digits", "200")
    calls.count_of(child, "digits", "200")  # a second thread doing the same first-call set-up: the same child
    real_calls.labels("digits", "200")  # children render in the order they were made
    calls.labels("digits", "503").inc()
    real_calls.labels("digits", "503").inc()
    for value in (0.0005, 0.02, 3.0):
        child.observe(value)
        real_latency.labels("digits").observe(value)
        real_calls.labels("digits", "200").inc()
    assert _exposition(lean) == _exposition(real)
    assert lean.get_sample_value("railgate_edge_t_calls_created", {"model": "digits", "status": "200"}) == child.created
    with pytest.raises(ValueError, match="observe that instead"):
        calls.labels("digits", "200")  # it has no inc of its own
    with pytest.raises(ValueError, match="exists already"):
        calls.count_of(latency.labels("vision"), "digits", "200")  # another histogram's count: refused
    with pytest.raises(ValueError, match="exists already"):
        calls.count_of(child, "digits", "503")  # a counter of its own already
