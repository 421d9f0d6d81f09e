"""Prometheus collectors, on a registry of their own per gateway (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "railgate_requests", "Inference requests answered", ["model", "status", "backend"], registry=r
        )
        self.latency = Histogram(
            "railgate_request_latency_seconds", "End-to-end latency in the gateway", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "railgate_queue_wait_seconds", "Time a request waited in its batch queue", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.backend_latency = Histogram(
            "railgate_backend_latency_seconds", "Time a batch spent at its backend", ["backend", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "railgate_batch_size", "Rows per batch sent to a backend", ["backend", "model"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batches = Counter(
            "railgate_batches", "Batches sent, by why they were flushed", ["model", "reason"], registry=r
        )
        self.queue_depth = Gauge("railgate_queue_depth", "Requests waiting in batch queues", ["model"], registry=r)
        self.inflight = Gauge("railgate_backend_inflight_batches", "Batches in flight", ["backend"], registry=r)
        self.backend_healthy = Gauge("railgate_backend_healthy", "1 when the backend is ready", ["backend"], registry=r)
        self.hub_state = Gauge(
            "railgate_hub_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["backend"], registry=r
        )
        self.ejections = Counter("railgate_hub_ejections", "Hubs ejected by outlier detection", ["backend"], registry=r)
        self.hub_failures = Counter(
            "railgate_hub_failures", "Failed batches by backend and cause (unreachable, protocol, error, timeout, "
            "rejected: the request's fault, never counted against the hub)", ["backend", "cause"], registry=r,
        )  # fmt: skip
        self.selections = Counter(
            "railgate_route_selections", "Batches sent, by backend, policy and reason", ["backend", "policy", "reason"],
            registry=r,
        )  # fmt: skip
        self.retries = Counter("railgate_retries", "Batches retried after this backend failed", ["backend"], registry=r)
        self.hedges = Counter("railgate_hedges", "Hedge copies sent to this backend", ["backend"], registry=r)
        self.shed = Counter(
            "railgate_shed", "Requests refused at admission, by priority or reason", ["reason"], registry=r
        )
        self.tenant_inferences = Counter(
            "railgate_tenant_inferences", "Inferences (batch rows) served per tenant", ["tenant", "model"], registry=r
        )
        self.tenant_spend = Counter(
            "railgate_tenant_spend", "Hub price x inferences, per tenant", ["tenant"], registry=r
        )
        # Fleet state (gateway/state): the whole fleet's billed usage as last read from Redis, and its reach.
        self.tenant_fleet_inferences = Gauge(
            "railgate_tenant_fleet_inferences", "Inferences billed per tenant, all gateway processes", ["tenant"],
            registry=r,
        )  # fmt: skip
        self.tenant_fleet_spend = Gauge(
            "railgate_tenant_fleet_spend", "Spend billed per tenant, all gateway processes", ["tenant"], registry=r
        )
        self.state_up = Gauge("railgate_state_up", "1 while the shared state (Redis) answers", registry=r)
        self.prediction_ratio = Histogram(
            "railgate_prediction_ratio", "Actual over predicted batch latency", ["backend"],
            buckets=(0.25, 0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 4.0, 10.0), registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
