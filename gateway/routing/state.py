"""Live state per backend: latency EWMAs (peak-sensitive), service time by batch size, errors.

Predicted latency of sending a batch of ``rows`` to a hub = backbone RTT + service time at that
batch size + queueing behind the batches already in flight there. Everything here is plain data
updated by the router; nothing does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.backends import BackendKind
from railcore.estimators import PeakEwma, TailWindow


def batch_bucket(rows: int) -> int:
    """Batch sizes grouped by power of two: service time is measured per bucket."""
    return 1 << max(rows - 1, 0).bit_length()


@dataclass(slots=True)
class ModelState:
    """One backend's measurements for one model."""

    total: PeakEwma = field(default_factory=PeakEwma)  # whole call as the gateway saw it
    service: dict[int, PeakEwma] = field(default_factory=dict)  # call minus RTT, by batch bucket
    tails: dict[int, TailWindow] = field(default_factory=dict)  # recent whole calls, by batch bucket
    hub_queue_s: float | None = None  # Triton's own average queue time (statistics extension)
    hub_compute_s: float | None = None  # Triton's own average compute time per request

    def service_s(self, rows: int, now: float = 0.0, decay_s: float = 0.0) -> float | None:
        bucket = batch_bucket(rows)
        exact = self.service.get(bucket)
        if exact is not None and exact.value is not None:
            return exact.decayed(now, decay_s)
        # Nearest measured bucket, scaled linearly: a fair first guess for an unseen batch size.
        measured = [(b, v) for b, e in self.service.items() if (v := e.decayed(now, decay_s)) is not None]
        if not measured:
            return None
        b, value = min(measured, key=lambda m: abs(m[0] - bucket))
        return value * bucket / b if bucket > b else value


def _queueing(state: ModelState, service: float, inflight: int, capacity: int) -> float:
    """The wait before a new batch starts: behind our own in-flight batches, or the hub's own average
    queue time (Triton's statistics), whichever is longer."""
    return max(service * (inflight // max(capacity, 1)), state.hub_queue_s or 0.0)


@dataclass(slots=True)
class BackendState:
    rtt: PeakEwma = field(default_factory=PeakEwma)
    models: dict[str, ModelState] = field(default_factory=dict)
    successes: int = 0
    failures: int = 0
    recent_errors: float = 0.0  # EWMA of the error indicator
    selections: int = 0
    rows_served: int = 0
    pending_requests: float | None = None  # nv_inference_pending_request_count, when scraped
    tail_window: int = 128  # samples per model and batch bucket for ``tail_s``

    def model(self, name: str) -> ModelState:
        state = self.models.get(name)
        if state is None:
            state = self.models[name] = ModelState()
        return state

    def predicted_s(
        self, model: str, rows: int, inflight: int, capacity: int, now: float = 0.0, decay_s: float = 0.0
    ) -> float | None:
        """RTT + service time at ``rows`` + queueing; None if never measured.

        Queueing is the longer of the wait behind our own in-flight batches and the hub's own
        average queue time (Triton's statistics): the hub's counts every client's work, which a
        gateway that shares the hub sees in no EWMA of its own until its batches start waiting."""
        state = self.models.get(model)
        if state is None:
            return None
        service = state.service_s(rows, now, decay_s)
        if service is None:
            return state.total.decayed(now, decay_s)
        rtt = self.rtt.value or 0.0
        return rtt + service + _queueing(state, service, inflight, capacity)

    def tail_s(
        self,
        model: str,
        rows: int,
        inflight: int,
        capacity: int,
        *,
        quantile: float,
        now: float = 0.0,
        decay_s: float = 0.0,
        measured_only: bool = False,
    ) -> float | None:
        """The ``quantile`` of the recent calls at ``rows``' batch bucket + queueing, as
        ``predicted_s``; at a batch size never sent, ``predicted_s``'s scaled guess; None if the
        model was never measured. ``measured_only``: None, not a guess, unless the window holds
        enough calls for the quantile to mean something (at least 1 / (1 - quantile))."""
        state = self.models.get(model)
        if state is None:
            return None
        window = state.tails.get(batch_bucket(rows))
        if measured_only and (window is None or len(window) * (1.0 - quantile) < 1.0):
            return None
        tail = None if window is None else window.decayed(quantile, now, decay_s)
        if tail is None:
            return self.predicted_s(model, rows, inflight, capacity, now, decay_s)
        service = state.service_s(rows, now, decay_s) or 0.0
        return tail + _queueing(state, service, inflight, capacity)

    def record(self, model: str, rows: int, seconds: float, ok: bool, now: float = 0.0) -> None:
        self.recent_errors += 0.1 * ((0.0 if ok else 1.0) - self.recent_errors)
        if not ok:
            self.failures += 1
            return
        self.successes += 1
        self.rows_served += rows
        state = self.model(model)
        state.total.update(seconds, now)
        service = max(seconds - (self.rtt.value or 0.0), 0.0)
        state.service.setdefault(batch_bucket(rows), PeakEwma()).update(service, now)
        self.record_tail(model, rows, seconds, now)

    def record_tail(self, model: str, rows: int, seconds: float, now: float = 0.0) -> None:
        """A sample for ``tail_s`` alone (``record`` adds every successful call's)."""
        state = self.model(model)
        bucket = batch_bucket(rows)
        window = state.tails.get(bucket)
        if window is None:
            window = state.tails[bucket] = TailWindow(self.tail_window)
        window.update(seconds, now)


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class BackendView:
    """A snapshot of one candidate backend, as a routing policy sees it."""

    name: str
    kind: BackendKind
    predicted_s: float | None  # None: never measured for this model
    inflight: int = 0
    capacity: int = 1  # batches it takes at once (max_inflight)
    region: str = "default"
    price_per_1k: float = 0.0
    carbon_g_per_kwh: float = 0.0
    # A high quantile of its recent calls (plus a margin): what must fit a budget. None: judged on
    # ``predicted_s`` (tail routing off, or never measured).
    tail_s: float | None = None
