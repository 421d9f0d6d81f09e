"""Prometheus collectors of one edge runtime, on a registry of its own, names prefixed ``railgate_edge_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = Counter(
            "railgate_edge_decisions", "Offload decisions, by where the call went and why", ["model", "where", "reason"],
            registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "railgate_edge_fallbacks", "Remote calls that failed and ran locally instead", ["model", "cause"],
            registry=r,
        )  # fmt: skip
        self.calls = Counter(
            "railgate_edge_calls", "Calls answered, by who served them and status", ["model", "served", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "railgate_edge_call_latency_seconds", "Latency of a call inside the runtime", ["model", "served"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.local_batch = Histogram(
            "railgate_edge_local_batch_size", "Rows per local ONNX Runtime run", ["model"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.circuit = Gauge(
            "railgate_edge_gateway_circuit_state", "Gateway circuit: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.predicted = Gauge(
            "railgate_edge_predicted_latency_ms", "Latest predicted latency per path", ["model", "path"], registry=r
        )
        self.syncs = Counter(
            "railgate_edge_syncs", "Model sync outcomes (updated, current, refused, failed)", ["model", "outcome"],
            registry=r,
        )  # fmt: skip
        self.sync_refusals = Counter(
            "railgate_edge_sync_refusals", "Model syncs refused, by why (hash_mismatch, bad_signature, ...)",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "railgate_edge_local_model", "1 for each model runnable on the device, with its sha256", ["model", "sha256"],
            registry=r,
        )  # fmt: skip
        # Label children cached per label tuple: ``labels()`` takes a lock and builds a key on every call.
        self._decision_children: dict[tuple[str, str, str], Counter] = {}

    def decision(self, model: str, where: str, reason: str) -> None:
        key = (model, where, reason)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(model, where, reason)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
