"""Prometheus collectors, on a registry of their own per gateway (no module-level globals).

The labelled families are the gateway's own collectors, not prometheus_client's ``Counter``, ``Gauge``
and ``Histogram``: those convert, validate and take a lock on every ``labels()``, every ``inc`` and
twice per ``observe`` (its sum and its bucket), and the hot path updates ~10 children per request.
Every update here is made on the event loop's thread (the gateway's only writer; the ONNX Runtime
pool threads never touch a metric), so a child is a plain number. Children are kept by label values,
exactly as prometheus_client keeps them, and no label takes a value a client chose freely. The
registry renders them as it renders its own (``_total``, ``_bucket``/``_count``/``_sum``, ``_created``).
"""

from __future__ import annotations

import bisect
import math
import time
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class Value:
    """A counter's or gauge's child: a number, and when it was made (a counter's ``_created``)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Buckets:
    """A histogram's child: a count per bucket (the last one +Inf), not cumulative until rendered."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bound >= amount: le semantics


C = TypeVar("C", Value, Buckets)


class _Family(Collector, Generic[C]):
    """A labelled collector updated on the event loop only; registered on ``registry``."""

    def __init__(self, name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self._children: dict[tuple[Any, ...], C] = {}
        self._labelled: dict[tuple[Any, ...], list[str]] = {}  # the same keys: their values as strings
        registry.register(self)

    def labels(self, *values: Any) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
            child = self._children[values] = self._child()
            self._labelled[values] = [str(v) for v in values]
        return child

    def remove(self, *values: Any) -> None:
        self._children.pop(values, None)
        self._labelled.pop(values, None)

    def _child(self) -> C:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, labels: list[str], child: C) -> None:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        for key, child in list(self._children.items()):
            self._add(family, self._labelled[key], child)
        return [family]


class LoopCounter(_Family[Value]):
    def _child(self) -> Value:
        return Value()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: Value) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(labels, child.value, created=child.created)


class LoopGauge(_Family[Value]):
    def _child(self) -> Value:
        return Value()

    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: Value) -> None:
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(labels, child.value)


class LoopHistogram(_Family[Buckets]):
    def __init__(
        self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.bounds = (*sorted(buckets), math.inf) if buckets[-1] != math.inf else tuple(sorted(buckets))
        self._les = [floatToGoString(b) for b in self.bounds]
        super().__init__(name, doc, labels, registry)

    def _child(self) -> Buckets:
        return Buckets(self.bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: Buckets) -> None:
        assert isinstance(family, HistogramMetricFamily)
        total, cumulative = 0, []
        for le, count in zip(self._les, child.counts, strict=True):
            total += count
            cumulative.append((le, total))
        family.add_metric(labels, cumulative, child.sum)
        family.samples.append(
            Sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)), child.created)
        )


_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RATIO_BUCKETS = (0.25, 0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 4.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()

        def counter(name: str, doc: str, labels: list[str]) -> LoopCounter:
            return LoopCounter(name, doc, labels, r)

        def gauge(name: str, doc: str, labels: list[str]) -> LoopGauge:
            return LoopGauge(name, doc, labels, r)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> LoopHistogram:
            return LoopHistogram(name, doc, labels, buckets, r)

        self.requests = counter("railgate_requests", "Inference requests answered", ["model", "status", "backend"])
        self.latency = histogram(
            "railgate_request_latency_seconds", "End-to-end latency in the gateway", ["model"], _LATENCY_BUCKETS
        )
        self.queue_wait = histogram(
            "railgate_queue_wait_seconds", "Time a request waited in its batch queue", ["model"], _LATENCY_BUCKETS
        )
        self.backend_latency = histogram(
            "railgate_backend_latency_seconds", "Time a batch spent at its backend", ["backend", "model"],
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = histogram(
            "railgate_batch_size", "Rows per batch sent to a backend", ["backend", "model"], _BATCH_BUCKETS
        )
        self.batches = counter("railgate_batches", "Batches sent, by why they were flushed", ["model", "reason"])
        self.queue_depth = gauge("railgate_queue_depth", "Requests waiting in batch queues", ["model"])
        self.inflight = gauge("railgate_backend_inflight_batches", "Batches in flight", ["backend"])
        self.backend_healthy = gauge("railgate_backend_healthy", "1 when the backend is ready", ["backend"])
        self.hub_state = gauge(
            "railgate_hub_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["backend"]
        )
        self.ejections = counter("railgate_hub_ejections", "Hubs ejected by outlier detection", ["backend"])
        self.hub_failures = counter(
            "railgate_hub_failures", "Failed batches by backend and cause (unreachable, protocol, error, timeout, "
            "rejected: the request's fault, never counted against the hub)", ["backend", "cause"],
        )  # fmt: skip
        self.selections = counter(
            "railgate_route_selections", "Batches sent, by backend, policy and reason", ["backend", "policy", "reason"]
        )
        self.retries = counter("railgate_retries", "Batches retried after this backend failed", ["backend"])
        self.hedges = counter("railgate_hedges", "Hedge copies sent to this backend", ["backend"])
        self.shed = counter("railgate_shed", "Requests refused at admission, by priority or reason", ["reason"])
        self.tenant_inferences = counter(
            "railgate_tenant_inferences", "Inferences (batch rows) served per tenant", ["tenant", "model"]
        )
        self.tenant_spend = counter("railgate_tenant_spend", "Hub price x inferences, per tenant", ["tenant"])
        # Fleet state (gateway/state): the whole fleet's billed usage as last read from Redis, and its reach.
        self.tenant_fleet_inferences = gauge(
            "railgate_tenant_fleet_inferences", "Inferences billed per tenant, all gateway processes", ["tenant"]
        )
        self.tenant_fleet_spend = gauge(
            "railgate_tenant_fleet_spend", "Spend billed per tenant, all gateway processes", ["tenant"]
        )
        self.state_up = Gauge("railgate_state_up", "1 while the shared state (Redis) answers", registry=r)
        # The age of the oldest answered usage row not yet in the fleet's ledger (rows journalled locally
        # in a Redis outage, until replayed); 0 when none is waiting, and always 0 on the embedded ledger,
        # where a row is committed before its answer is released.
        self.ledger_lag = Gauge(
            "railgate_usage_ledger_lag_seconds", "Age of the oldest answered usage row not yet in the ledger",
            registry=r,
        )  # fmt: skip
        self.state_journalled = Counter(
            "railgate_state_journalled_rows", "Usage rows journalled locally while Redis was down", registry=r
        )
        self.state_replayed = Counter(
            "railgate_state_replayed_rows", "Journalled usage rows replayed to Redis (a batch seen before: not)",
            registry=r,
        )  # fmt: skip
        self.prediction_ratio = histogram(
            "railgate_prediction_ratio", "Actual over predicted batch latency", ["backend"], _RATIO_BUCKETS
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
