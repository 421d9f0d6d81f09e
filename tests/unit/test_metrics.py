"""The gateway's metric families: children cached by label values, never stale, rendered as before."""

from __future__ import annotations

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
    assert metrics.requests.labels("digits", "200", "hub") is metrics.requests.metric.labels("digits", "200", "hub")
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
