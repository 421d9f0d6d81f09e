"""The router: which backends serve which model, their live state, and who gets the next batch.

Pure apart from the clock it is given: the gateway passes ``time.monotonic`` (nanosecond
resolution) and the routing simulator in bench/ passes a virtual clock, and both run this very
code. The clock timestamps latency samples and breaker events; the forwarder and the pipeline
measure durations on it too, so one injected clock makes a whole run virtual.

Each chosen batch carries its breaker ``Ticket`` in its ``Selection``; whoever sends it settles it
with ``report`` (success or failure, by cause) or ``release`` (an outcome that says nothing about
the hub), so a half-open trial always resolves.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.backends import Backend
from gateway.config import Health, Routing
from gateway.routing.policy import Route, choose
from gateway.routing.state import BackendState, BackendView
from gateway.routing.tariff import price_now
from railcore.breaker import Breaker, BreakerPolicy, BreakerState, Ticket
from railcore.catalog import ModelInfo
from railcore.errors import Cause, ModelNotFound, NoBackend

log = logging.getLogger("railgate.router")

Clock = Callable[[], float]


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Selection:
    backend: Backend
    reason: str
    predicted_s: float | None
    ticket: Ticket | None = None  # the breaker's pass for this batch: settle it with report or release


class Router:
    """Holds the backends, the merged model catalog, and per-backend state and breakers."""

    def __init__(
        self,
        backends: list[Backend],
        config: Routing | None = None,
        health: Health | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        minute_of_day: Callable[[], int] | None = None,
    ) -> None:
        self.config = config or Routing()
        health = health or Health()
        self.breaker_policy = BreakerPolicy(
            health.failures_to_eject, health.base_ejection_s, health.max_ejection_s, health.slow_start_s
        )
        self.rng = rng or random.Random()
        self.clock = clock
        self.minute_of_day = minute_of_day or _utc_minute
        self.backends: list[Backend] = []
        self.state: dict[str, BackendState] = {}
        self.breakers: dict[str, Breaker] = {}
        self.draining: set[str] = set()
        self.catalog: dict[str, ModelInfo] = {}
        self._serving: dict[str, list[Backend]] = {}
        self._turn = 0
        self.recent: deque[dict[str, object]] = deque(maxlen=20)
        self.on_state_change: Callable[[str, BreakerState], None] = lambda backend, state: None
        for backend in backends:
            self.add(backend)

    # -- membership ------------------------------------------------------------------------------

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        self.state.setdefault(backend.name, BackendState(tail_window=self.config.tail_window))
        self.breakers.setdefault(backend.name, Breaker(self.breaker_policy))

    def remove(self, name: str) -> Backend | None:
        backend = self.backend(name)
        if backend is not None:
            self.backends.remove(backend)
            self.draining.discard(name)
            self.rebuild_catalog()
        return backend

    def regions(self) -> frozenset[str]:
        """The regions the backends are in, healthy or not: the ones a call may name."""
        return frozenset(b.region for b in self.backends)

    def backend(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def rebuild_catalog(self) -> None:
        """Merge what each backend discovered. A backend whose metadata for a model disagrees
        with the first backend's is not used for that model."""
        catalog: dict[str, ModelInfo] = {}
        serving: dict[str, list[Backend]] = {}
        for backend in self.backends:
            for name, info in backend.models.items():
                first = catalog.get(name)
                if first is None:
                    catalog[name] = info
                elif first.signature() != info.signature():
                    log.warning("event=metadata_mismatch model=%s backend=%s", name, backend.name)
                    continue
                serving.setdefault(name, []).append(backend)
        # A batch may go to any serving backend, so it must fit the smallest one's max batch.
        for name, backends in serving.items():
            smallest = min(b.models[name].max_batch_size for b in backends)
            if smallest != catalog[name].max_batch_size:
                info = catalog[name]
                catalog[name] = ModelInfo(
                    info.name,
                    info.versions,
                    info.platform,
                    info.inputs,
                    info.outputs,
                    smallest,
                    info.preferred_batch_sizes,
                    info.config,
                )
        self.catalog, self._serving = catalog, serving

    def model(self, name: str) -> ModelInfo:
        info = self.catalog.get(name)
        if info is None:
            known = ", ".join(sorted(self.catalog)) or "none"
            raise ModelNotFound(f"unknown model {name[:80]!r}; this gateway serves: {known}")
        return info

    # -- choosing --------------------------------------------------------------------------------

    def usable(self, backend: Backend, now: float) -> bool:
        return backend.healthy and backend.name not in self.draining and self.breakers[backend.name].share(now) > 0

    def ready(self, model: str) -> bool:
        now = self.clock()
        return any(self.usable(b, now) for b in self._serving.get(model, ()))

    def candidates(
        self, model: str, route: Route | None = None, exclude: frozenset[str] = frozenset()
    ) -> list[Backend]:
        now = self.clock()
        # The local backend is no exception: it is in the gateway's region (local.region).
        return [
            b
            for b in self._serving.get(model, ())
            if b.name not in exclude and self.usable(b, now) and (route is None or route.allows(b.region))
        ]

    def predicted_s(self, backend: Backend, model: str, rows: int = 1) -> float | None:
        state = self.state[backend.name]
        return state.predicted_s(
            model, rows, backend.inflight, backend.capacity, self.clock(), self.config.ewma_decay_s
        )

    def tail_s(self, backend: Backend, model: str, rows: int = 1) -> float | None:
        """What a budget must fit for ``backend`` to serve: its recent ``routing.tail_quantile`` plus
        ``routing.tail_margin_ms``; None when tail routing is off (``tail_quantile: 0``) or unmeasured."""
        quantile = self.config.tail_quantile
        if quantile <= 0:
            return None
        tail = self._quantile_s(backend, model, rows, quantile, measured_only=False)
        return None if tail is None else tail + self.config.tail_margin_ms / 1000

    def measured_quantile_s(self, backend: Backend, model: str, rows: int, quantile: float) -> float | None:
        """The ``quantile`` of ``backend``'s recent calls of ``model`` at ``rows`` plus queueing, once
        enough calls were measured for it; no margin added."""
        return self._quantile_s(backend, model, rows, quantile, measured_only=True)

    def _quantile_s(
        self, backend: Backend, model: str, rows: int, quantile: float, measured_only: bool
    ) -> float | None:
        return self.state[backend.name].tail_s(
            model,
            rows,
            backend.inflight,
            backend.capacity,
            quantile=quantile,
            now=self.clock(),
            decay_s=self.config.ewma_decay_s,
            measured_only=measured_only,
        )

    def price_now(self, backend: Backend, model: str, minute: int | None = None) -> float:
        spec = getattr(backend, "spec", None)
        if spec is None:
            return backend.price_per_1k
        return price_now(spec, model, self.minute_of_day() if minute is None else minute)

    def choose(
        self, model: str, budget_s: float, route: Route, rows: int = 1, exclude: frozenset[str] = frozenset()
    ) -> Selection:
        """The backend for one batch of ``model`` under ``route``'s policy and residency."""
        candidates = self.candidates(model, route, exclude)
        if not candidates:
            if route.regions is not None and self.candidates(model, exclude=exclude):
                allowed = ", ".join(sorted(route.regions))
                raise NoBackend(f"no healthy backend in the allowed regions [{allowed}] serves model {model!r}")
            tried = f" (tried {', '.join(sorted(exclude))})" if exclude else ""
            raise NoBackend(f"no healthy backend serves model {model!r} now{tried}")
        now = self.clock()
        # Slow start: a hub back from ejection is offered only a growing share of the batches.
        ramped = [b for b in candidates if self.rng.random() < self.breakers[b.name].share(now)]
        candidates = ramped or candidates
        minute = self.minute_of_day()  # once per batch, not per candidate
        views = [
            BackendView(
                b.name,
                b.kind,
                self.predicted_s(b, model, rows),
                b.inflight,
                b.capacity,
                b.region,
                self.price_now(b, model, minute),
                b.carbon_g_per_kwh,
                self.tail_s(b, model, rows),
            )
            for b in candidates
        ]
        self._turn += 1
        decision = choose(views, budget_s, route.policy, self.rng, self._turn, self.config.balance_weight)
        backend = candidates[next(i for i, v in enumerate(views) if v is decision.backend)]
        self.state[backend.name].selections += 1
        ticket = self.breakers[backend.name].on_send(now)
        self.recent.append(
            {"model": model, "backend": backend.name, "policy": route.policy, "reason": decision.reason, "rows": rows}
        )
        return Selection(backend, decision.reason, decision.backend.predicted_s, ticket)

    # -- outcomes --------------------------------------------------------------------------------

    def report(
        self,
        backend: Backend,
        model: str,
        rows: int,
        seconds: float,
        ok: bool,
        *,
        ticket: Ticket | None = None,
        cause: Cause = Cause.ERROR,
    ) -> None:
        """Record a batch's outcome: latency EWMAs, error rate, and the breaker (a failure by ``cause``).

        ``ticket``: the one ``choose`` gave the batch; without one the call counts as sent now."""
        now = self.clock()
        self.state[backend.name].record(model, rows, seconds, ok, now)
        breaker = self.breakers[backend.name]
        if ok:
            if breaker.on_success(now, ticket):
                log.info("event=hub_restored hub=%s", backend.name)
                self.on_state_change(backend.name, BreakerState.CLOSED)
        elif breaker.on_failure(now, ticket, cause):
            log.warning(
                "event=hub_ejected hub=%s cause=%s for_s=%.1f ejections=%d",
                backend.name,
                cause,
                breaker.backoff_s,
                breaker.ejections,
            )
            self.on_state_change(backend.name, BreakerState.OPEN)

    def release(self, backend: Backend, ticket: Ticket | None, cause: Cause | None = None) -> None:
        """A batch ended saying nothing about the hub (cancelled, the hub's 4xx, cut by its own
        budget): its half-open trial slot, if it held it, is free again."""
        breaker = self.breakers.get(backend.name)
        if breaker is not None:
            breaker.release(ticket, cause)

    def observe_tail(self, backend: Backend, model: str, rows: int, seconds: float) -> None:
        """A call's time for ``tail_s`` alone (not the EWMAs, not the breaker): a hub call that lost a
        local rescue, counted as the budget it was given."""
        self.state[backend.name].record_tail(model, rows, seconds, self.clock())

    def observe_rtt(self, backend: Backend, seconds: float) -> None:
        self.state[backend.name].rtt.update(seconds, self.clock())


def _utc_minute() -> int:
    """Minutes past UTC midnight: Unix time has 86,400 s a day (no leap seconds), so whole minutes since
    the epoch modulo a day's 1,440 are gmtime's hour * 60 + minute, at a tenth of its cost (per batch)."""
    return int(time.time() // 60) % 1440
