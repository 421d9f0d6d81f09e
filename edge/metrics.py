"""Prometheus collectors of one edge runtime, on a registry of its own, names prefixed ``railgate_edge_``.

The families a call touches on its way (decisions, fallbacks, calls, call latency, local batch size) are
``LeanCounter`` / ``LeanHistogram``: the same exposition as prometheus_client's Counter and Histogram
(names, ``_total``/``_bucket``/``_count``/``_sum``/``_created`` samples, label order), with children that
cost one small lock per update. prometheus_client's own children take ~2.5 us per ``inc`` and ~3 us per
``observe`` here (observability checks, a lock per value, a bucket scan), and a local call makes four
such updates: most of what ``infer_sync`` added over a bare ``InferenceSession.run``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# The model label of a call for a model neither the device nor the gateway knows (as the gateway's own).
UNKNOWN_MODEL = "(unknown)"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _CounterChild:
    __slots__ = ("created", "lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()
        self.lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters can only be incremented by non-negative amounts, got {amount}")
        with self.lock:
            self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "lock", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.created = time.time()
        self.lock = threading.Lock()

    def observe(self, amount: float) -> None:
        i = bisect_left(self.bounds, amount)  # the first bound >= amount: buckets are "le"
        with self.lock:
            self.counts[i] += 1
            self.sum += amount


class _CountOf:
    """A counter child that is a histogram child's number of observations: a call counted by both costs
    one update, not two. It cannot be incremented on its own."""

    __slots__ = ("histogram",)

    def __init__(self, histogram: _HistogramChild) -> None:
        self.histogram = histogram

    @property
    def value(self) -> float:
        with self.histogram.lock:
            return float(sum(self.histogram.counts))

    @property
    def created(self) -> float:
        return self.histogram.created


class _Lean(Collector):
    """A labelled family whose children live in a dict keyed by their label values."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild | _HistogramChild | _CountOf] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def _child(self, values: tuple[str, ...]) -> _CounterChild | _HistogramChild | _CountOf:
        child = self._children.get(values)
        if child is not None:
            return child
        values = self._key(values)
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._new()
        return child

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """``values`` as a child's key: one per label name, each a string."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected label values for {', '.join(self.labelnames)}, got {values!r}")
        return tuple(str(v) for v in values)

    def _new(self) -> _CounterChild | _HistogramChild:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], _CounterChild | _HistogramChild | _CountOf]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _family(self) -> Metric:
        raise NotImplementedError


class LeanCounter(_Lean):
    def labels(self, *values: str) -> _CounterChild:
        child = self._child(values)
        if not isinstance(child, _CounterChild):
            raise ValueError(f"{self.name}{list(values)} counts a histogram's observations: observe that instead")
        return child

    def count_of(self, histogram: _HistogramChild, *values: str) -> None:
        """The child for ``values`` is ``histogram``'s observation count from now on (before any ``labels``
        made it a counter of its own)."""
        key = self._key(values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                self._children[key] = _CountOf(histogram)
            elif not (isinstance(child, _CountOf) and child.histogram is histogram):  # another thread's is the same
                raise ValueError(f"{self.name}{list(key)} exists already")

    def _new(self) -> _CounterChild:
        return _CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in self._items():
            assert isinstance(child, _CounterChild | _CountOf)
            family.add_metric(values, child.value, created=child.created)
        yield family


class LeanHistogram(_Lean):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"{name}: buckets must be increasing, got {buckets!r}")
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> _HistogramChild:
        return self._child(values)  # type: ignore[return-value]

    def _new(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, child in self._items():
            assert isinstance(child, _HistogramChild)
            with child.lock:
                counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, total)
            family.samples.append(
                Sample(self.name + "_created", dict(zip(self.labelnames, values, strict=True)), child.created)
            )
        yield family


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = LeanCounter(
            "railgate_edge_decisions", "Offload decisions, by where the call went and why", ["model", "where", "reason"],
            registry=r,
        )  # fmt: skip
        self.fallbacks = LeanCounter(
            "railgate_edge_fallbacks", "Remote calls that failed and ran locally instead", ["model", "cause"],
            registry=r,
        )  # fmt: skip
        self.calls = LeanCounter(
            "railgate_edge_calls", "Calls answered, by who served them and status", ["model", "served", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = LeanHistogram(
            "railgate_edge_call_latency_seconds", "Latency of a call inside the runtime", ["model", "served"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.local_batch = LeanHistogram(
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

    def decision(self, model: str, where: str, reason: str) -> None:
        self.decisions.labels(model, where, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
