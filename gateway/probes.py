"""Health probes and hub statistics: the timers that keep the router's view of each backend current.

``Probes.refresh`` probes one backend; on its transition to healthy it re-reads the backend's models
(and warms a new hub up) before the backend takes traffic. Only a hub that cannot list its models
is held back: a model that cannot be read is skipped at discovery, and warm-up never marks a hub,
or any of its models, down. ``probe_forever`` and
``statistics_forever`` are the periodic loops; the gateway owns their tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.backends import Backend, BackendKind
from gateway.config import Health
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.warmup import warm_up
from railcore.breaker import BreakerState

log = logging.getLogger("railgate.gateway")

BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Probes:
    """Probes backends and reads hub statistics into the router's state and the metrics."""

    def __init__(self, router: Router, metrics: Metrics, health: Health) -> None:
        self.router = router
        self.metrics = metrics
        self.health = health
        self._warmed: set[str] = set()
        self._stats: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._scrape_failing: set[str] = set()  # hubs whose last statistics scrape failed

    async def refresh(self, backend: Backend) -> bool:
        """Probe one backend; on a transition to healthy, re-read its models (and warm a new hub up
        before it takes traffic). Returns True when its health changed."""
        health = self.health
        t0 = time.monotonic()
        healthy = await backend.probe(health.probe_timeout_s)
        if healthy and backend.kind == BackendKind.HUB:
            self.router.observe_rtt(backend, time.monotonic() - t0)
        if healthy and not backend.healthy:
            try:
                await asyncio.wait_for(backend.discover(), health.discover_timeout_s)
            except (Exception, TimeoutError) as exc:  # a hub that cannot list its models is not usable
                log.warning("event=discover_failed backend=%s error=%r", backend.name, exc)
                healthy = False
            if healthy and health.warmup and backend.kind == BackendKind.HUB and backend.name not in self._warmed:
                await self._warm_up(backend)
        if not healthy:
            self._warmed.discard(backend.name)  # a hub that comes back may be a new process: warm it again
        changed = healthy != backend.healthy
        if changed:
            log.info("event=backend_%s backend=%s", "ready" if healthy else "unhealthy", backend.name)
        backend.healthy = healthy
        self.metrics.backend_healthy.labels(backend.name).set(1 if healthy else 0)
        return changed

    async def _warm_up(self, backend: Backend) -> None:
        """Warm a new hub up. Warm-up is an optimisation: whatever fails is logged (``warm_up`` logs
        each model's failure) and the hub takes traffic regardless; it is not retried until the hub
        comes back as a new process."""
        timeout_s = self.health.discover_timeout_s
        try:
            await asyncio.wait_for(warm_up(backend, self.router, timeout_s), timeout_s)
        except (Exception, TimeoutError) as exc:
            log.warning("event=warmup_failed hub=%s still_served=true error=%r", backend.name, exc)
        self._warmed.add(backend.name)

    def on_breaker_change(self, backend: str, state: str) -> None:
        """The router's breaker callback: the state gauge, and an ejection counted on opening."""
        breaker = self.router.breakers[backend]
        self.metrics.hub_state.labels(backend).set(BREAKER_GAUGE[breaker.state])
        if state == BreakerState.OPEN.value:
            self.metrics.ejections.labels(backend).inc()

    async def probe_forever(self) -> None:
        interval = self.health.probe_interval_s
        while True:
            await asyncio.sleep(interval)  # the probe period itself, not a synchronisation
            hubs = [b for b in self.router.backends if b.kind == BackendKind.HUB]
            changes = await asyncio.gather(*(self.refresh(b) for b in hubs), return_exceptions=True)
            if any(c is True for c in changes):
                self.router.rebuild_catalog()
            for backend in hubs:
                breaker = self.router.breakers[backend.name]
                breaker.share(self.router.clock())  # an expired ejection turns half-open
                self.metrics.hub_state.labels(backend.name).set(BREAKER_GAUGE[breaker.state])

    async def statistics_forever(self) -> None:
        while True:
            await asyncio.sleep(self.health.stats_interval_s)  # the polling period
            hubs = [b for b in self.router.backends if b.kind == BackendKind.HUB and b.healthy]
            await asyncio.gather(*(self.read_statistics(b) for b in hubs))

    async def read_statistics(self, backend: Backend) -> None:
        """Triton's own queue and compute times per model (deltas since the last read).

        A scrape that fails is logged when the scrapes start failing and when they recover, not on
        every poll: a hub whose statistics endpoint is gone would otherwise log every few seconds."""
        try:
            await self._read_statistics(backend)
        except Exception as exc:  # any failure to read or parse: the router keeps its last values
            if backend.name not in self._scrape_failing:
                self._scrape_failing.add(backend.name)
                log.warning("event=stats_scrape_failed hub=%s error=%r", backend.name, exc)
            return
        if backend.name in self._scrape_failing:
            self._scrape_failing.discard(backend.name)
            log.info("event=stats_scrape_restored hub=%s", backend.name)

    async def _read_statistics(self, backend: Backend) -> None:
        stats = await backend.statistics()
        state = self.router.state[backend.name]
        for model, (count, queue_ns, compute_ns) in stats.items():
            before = self._stats.get((backend.name, model))
            self._stats[(backend.name, model)] = (count, queue_ns, compute_ns)
            if before is None or count <= before[0]:
                continue
            n = count - before[0]
            model_state = state.model(model)
            model_state.hub_queue_s = (queue_ns - before[1]) / n / 1e9
            model_state.hub_compute_s = (compute_ns - before[2]) / n / 1e9
        state.pending_requests = await backend.pending_requests()
