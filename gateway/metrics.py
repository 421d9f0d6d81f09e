"""Prometheus collectors, on a registry of their own per gateway (no module-level globals).

Every labelled collector is wrapped in a ``Family`` that keeps its children by label values:
prometheus_client's own ``labels()`` converts, validates and takes a lock on every call, and the
hot path asks for 4-6 children per request and ~7 per batch.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Family(Generic[M]):
    """A labelled collector whose children are looked up once per distinct label values.

    Bounded as the collector itself is: a child is cached exactly when prometheus keeps one, and no
    label here takes a value a client chose freely. Anything but ``labels`` and ``remove`` (``collect``
    and the rest) is the collector's own.
    """

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[Any, ...], M] = {}

    def labels(self, *values: Any) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child

    def remove(self, *values: Any) -> None:
        self._children.pop(values, None)
        self.metric.remove(*values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RATIO_BUCKETS = (0.25, 0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 4.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()

        def counter(name: str, doc: str, labels: list[str]) -> Family[Counter]:
            return Family(Counter(name, doc, labels, registry=r))

        def gauge(name: str, doc: str, labels: list[str]) -> Family[Gauge]:
            return Family(Gauge(name, doc, labels, registry=r))

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Family[Histogram]:
            return Family(Histogram(name, doc, labels, buckets=buckets, registry=r))

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
