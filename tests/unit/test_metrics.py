"""The gateway's metric families: children cached by label values, never stale, rendered exactly as
prometheus_client renders its own Counter, Gauge and Histogram."""

from __future__ import annotations

import pytest

from gateway.metrics import Metrics


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_a_cached_child_counts_into_the_registry() -> None:
    metrics = Metrics()
    metrics.requests.labels("digits", "200", "hub").inc()
    metrics.requests.labels("digits", "200", "hub").inc(2)
    assert metrics.requests.labels("digits", "200", "hub") is metrics.requests.labels("digits", "200", "hub")
    assert _value(metrics, "railgate_requests_total", model="digits", status="200", backend="hub") == 3


def test_a_removed_child_is_not_served_from_the_cache() -> None:
    metrics = Metrics()
    metrics.inflight.labels("hub").inc()
    metrics.inflight.remove("hub")
    assert _value(metrics, "railgate_backend_inflight_batches", backend="hub") is None
    metrics.inflight.labels("hub").inc()  # a fresh child, registered again
    assert _value(metrics, "railgate_backend_inflight_batches", backend="hub") == 1


def test_the_collector_api_passes_through() -> None:
    metrics = Metrics()
    metrics.latency.labels("digits").observe(0.01)
    (family,) = metrics.latency.collect()
    assert family.name == "railgate_request_latency_seconds"


def test_histogram_buckets_are_cumulative_with_le_semantics_and_a_created_series() -> None:
    metrics = Metrics()
    child = metrics.latency.labels("digits")
    for seconds in (0.0005, 0.0005001, 0.002, 20.0):  # on a bound, just past it, another bound, past the last
        child.observe(seconds)
    le = {"model": "digits"}
    assert _value(metrics, "railgate_request_latency_seconds_bucket", le="0.0005", **le) == 1
    assert _value(metrics, "railgate_request_latency_seconds_bucket", le="0.001", **le) == 2
    assert _value(metrics, "railgate_request_latency_seconds_bucket", le="0.002", **le) == 3
    assert _value(metrics, "railgate_request_latency_seconds_bucket", le="10.0", **le) == 3
    assert _value(metrics, "railgate_request_latency_seconds_bucket", le="+Inf", **le) == 4
    assert _value(metrics, "railgate_request_latency_seconds_count", **le) == 4
    assert _value(metrics, "railgate_request_latency_seconds_sum", **le) == pytest.approx(20.0030001)
    assert (_value(metrics, "railgate_request_latency_seconds_created", **le) or 0) > 1.7e9


def test_a_wrong_number_of_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="expected labels"):
        Metrics().requests.labels("digits")


def test_the_render_is_prometheus_text_with_types_and_help() -> None:
    metrics = Metrics()
    metrics.requests.labels("digits", "200", "hub").inc()
    metrics.inflight.labels("hub").set(2)
    text = metrics.render().decode()
    assert "# TYPE railgate_requests_total counter" in text
    assert 'railgate_requests_total{backend="hub",model="digits",status="200"} 1.0' in text
    assert "# TYPE railgate_backend_inflight_batches gauge" in text
    assert 'railgate_backend_inflight_batches{backend="hub"} 2.0' in text
    assert "# TYPE railgate_request_latency_seconds histogram" in text
