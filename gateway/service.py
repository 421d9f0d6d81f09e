"""The gateway as one object: backends, router, pipeline, health probes and metrics, wired from config.

``Gateway.start`` opens the backends and reads their models; ``close`` drains and releases them.
``reload`` swaps the hub table without dropping a request. The HTTP layer (server.py) only calls
into this object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.backends import Backend
from gateway.backends.local import LocalBackend
from gateway.backends.triton import hub_backend
from gateway.config import GatewayConfig, HubSpec, load_config
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router
from gateway.routing.state import batch_bucket
from gateway.tenants import Tenants
from railcore.breaker import BreakerState
from railcore.catalog import ModelInfo
from railcore.protocol.types import numpy_dtype

log = logging.getLogger("railgate.gateway")

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Gateway:
    def __init__(self, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.local: LocalBackend | None = LocalBackend(config.local) if config.local.enabled else None
        backends: list[Backend] = [hub_backend(spec) for spec in config.hubs]
        if self.local is not None:
            backends.append(self.local)
        self.router = Router(backends, config.routing, config.health)
        self.router.on_state_change = self._on_breaker_change
        self.pipeline = Pipeline(
            self.router, config.batching, config.limits, self.metrics, config.routing, config.admission
        )
        self.tenants = Tenants(config.tenants, config.admin_keys)
        self.draining = False  # set on SIGTERM: readiness fails while accepted requests finish
        self.refusing = False  # then: new requests are refused with 503 until the listener closes
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warmed: set[str] = set()
        self._stats: dict[tuple[str, str], tuple[float, float, float]] = {}

    @property
    def backends(self) -> list[Backend]:
        return self.router.backends

    def _spawn(self, coro, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        await asyncio.gather(*(self._refresh(b) for b in self.backends))
        self.router.rebuild_catalog()
        if not self.router.catalog:
            log.warning("event=no_models hint=no backend serves any model yet; hubs are probed again")
        self._spawn(self._probe_forever(), "health-probes")
        self._spawn(self._stats_forever(), "hub-statistics")

    # -- health ----------------------------------------------------------------------------------

    async def _refresh(self, backend: Backend) -> bool:
        """Probe one backend; on a transition to healthy, re-read its models (and warm a new hub up
        before it takes traffic). Returns True when its health changed."""
        health = self.config.health
        t0 = time.monotonic()
        healthy = await backend.probe(health.probe_timeout_s)
        if healthy and backend.kind == "hub":
            self.router.observe_rtt(backend, time.monotonic() - t0)
        if healthy and not backend.healthy:
            try:
                await asyncio.wait_for(backend.discover(), health.discover_timeout_s)
                if health.warmup and backend.kind == "hub" and backend.name not in self._warmed:
                    await asyncio.wait_for(self._warm_up(backend), health.discover_timeout_s)
                    self._warmed.add(backend.name)
            except (Exception, TimeoutError) as exc:  # a hub that cannot list its models is not usable
                log.warning("event=discover_failed backend=%s error=%r", backend.name, exc)
                healthy = False
        if not healthy:
            self._warmed.discard(backend.name)  # a hub that comes back may be a new process: warm it again
        changed = healthy != backend.healthy
        if changed:
            log.info("event=backend_%s backend=%s", "ready" if healthy else "unhealthy", backend.name)
        backend.healthy = healthy
        self.metrics.backend_healthy.labels(backend.name).set(1 if healthy else 0)
        return changed

    async def _warm_up(self, backend: Backend) -> None:
        """One batch per power-of-two batch size (and preferred size) of every model: Triton's first
        request at a new batch size can take seconds, and real traffic should not pay for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.health.discover_timeout_s
        calls = [
            backend.infer(info.name, "", _zeros(info, rows), [o.name for o in info.outputs], deadline)
            for info in backend.models.values()
            for rows in _warmup_sizes(info)
        ]
        await asyncio.gather(*calls)
        # One more single-row call per model, now warm, seeds the latency estimates: an unmeasured
        # hub counts as fastest, and tight budgets would otherwise be sent to it to find out.
        for info in backend.models.values():
            rows = 1 if info.max_batch_size > 0 else 0
            start = loop.time()
            await backend.infer(info.name, "", _zeros(info, rows), [o.name for o in info.outputs], deadline)
            self.router.report(backend, info.name, max(rows, 1), loop.time() - start, ok=True)
        log.info("event=hub_warmed hub=%s batches=%d", backend.name, len(calls) + len(backend.models))

    def _on_breaker_change(self, backend: str, state: str) -> None:
        breaker = self.router.breakers[backend]
        self.metrics.hub_state.labels(backend).set(_BREAKER_GAUGE[breaker.state])
        if state == BreakerState.OPEN.value:
            self.metrics.ejections.labels(backend).inc()

    async def _probe_forever(self) -> None:
        interval = self.config.health.probe_interval_s
        while True:
            await asyncio.sleep(interval)  # the probe period itself, not a synchronisation
            hubs = [b for b in self.backends if b.kind == "hub"]
            changes = await asyncio.gather(*(self._refresh(b) for b in hubs), return_exceptions=True)
            if any(c is True for c in changes):
                self.router.rebuild_catalog()
            for backend in hubs:
                breaker = self.router.breakers[backend.name]
                breaker.share(self.router.clock())  # an expired ejection turns half-open
                self.metrics.hub_state.labels(backend.name).set(_BREAKER_GAUGE[breaker.state])

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.stats_interval_s)  # the polling period
            hubs = [b for b in self.backends if b.kind == "hub" and b.healthy]
            await asyncio.gather(*(self._read_statistics(b) for b in hubs), return_exceptions=True)

    async def _read_statistics(self, backend: Backend) -> None:
        """Triton's own queue and compute times per model (deltas since the last read)."""
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

    def ready(self) -> bool:
        return not self.draining and any(self.router.ready(m) for m in self.router.catalog)

    # -- hub table -------------------------------------------------------------------------------

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config file's hub table. A bad file raises ConfigError and changes nothing.

        New hubs are started, probed, warmed up and added; removed hubs are drained (no new
        batches; their in-flight batches finish) and then closed; a changed hub whose address or
        protocol stayed is updated in place (price, tariff, region, carbon, capacity).
        """
        if self.config_path is None:
            raise ValueError("the gateway was started without a config file; nothing to reload")
        new = load_config(self.config_path)
        old = {h.name: h for h in self.config.hubs}
        fresh = {h.name: h for h in new.hubs}
        added, removed, updated = [], [], []
        for name, spec in fresh.items():
            previous = old.get(name)
            if previous == spec:
                continue
            if previous is not None and (previous.url, previous.protocol) == (spec.url, spec.protocol):
                backend = self.router.backend(name)
                assert backend is not None
                _apply_spec(backend, spec)
                updated.append(name)
                continue
            if previous is not None:
                self._retire(name)
                removed.append(name)
            backend = hub_backend(spec)
            await backend.start()
            self.router.add(backend)
            await self._refresh(backend)
            added.append(name)
        for name in old.keys() - fresh.keys():
            self._retire(name)
            removed.append(name)
        self.config = dataclasses.replace(self.config, hubs=new.hubs)
        self.router.rebuild_catalog()
        log.info("event=hubs_reloaded added=%s removed=%s updated=%s", added, removed, updated)
        return {"added": added, "removed": removed, "updated": updated}

    def drain(self, name: str) -> Backend:
        backend = self.router.backend(name)
        if backend is None or backend.kind != "hub":
            raise KeyError(name)
        self.router.draining.add(name)
        log.info("event=hub_draining hub=%s inflight=%d", name, backend.inflight)
        return backend

    def undrain(self, name: str) -> Backend:
        backend = self.router.backend(name)
        if backend is None or backend.kind != "hub":
            raise KeyError(name)
        self.router.draining.discard(name)
        log.info("event=hub_undrained hub=%s", name)
        return backend

    def _retire(self, name: str) -> None:
        backend = self.router.backend(name)
        if backend is None:
            return
        self.router.draining.add(name)
        self._spawn(self._close_when_idle(backend), f"retire-{name}")

    async def _close_when_idle(self, backend: Backend) -> None:
        # In-flight batches end by their deadlines at the latest, so this wait is bounded too.
        give_up = time.monotonic() + self.config.deadlines.max_budget_ms / 1000
        while backend.inflight > 0 and time.monotonic() < give_up:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.05)
        self.router.remove(backend.name)
        await backend.close()

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.router.clock()
        total = sum(s.selections for s in self.router.state.values()) or 1
        hubs = []
        for backend in self.backends:
            state = self.router.state[backend.name]
            breaker = self.router.breakers[backend.name]
            breaker.share(now)
            models = {}
            for name, m in state.models.items():
                models[name] = {
                    "latency_ms": _ms(m.total.value),
                    "p95_ms": _ms(m.total.p95),
                    "service_ms_by_batch": {str(b): _ms(e.value) for b, e in sorted(m.service.items())},
                    "hub_queue_ms": _ms(m.hub_queue_s),
                    "hub_compute_ms": _ms(m.hub_compute_s),
                    "price_per_1k_now": self.router.price_now(backend, name),
                }
            hubs.append(
                {
                    "name": backend.name,
                    "kind": backend.kind,
                    "region": backend.region,
                    "healthy": backend.healthy,
                    "breaker": breaker.state.value,
                    "draining": backend.name in self.router.draining,
                    "ejections": breaker.ejections,
                    "rtt_ms": _ms(state.rtt.value),
                    "inflight": backend.inflight,
                    "capacity": backend.capacity,
                    "price_per_1k": backend.price_per_1k,
                    "carbon_g_per_kwh": backend.carbon_g_per_kwh,
                    "batches": state.selections,
                    "traffic_share": round(state.selections / total, 4),
                    "rows_served": state.rows_served,
                    "error_rate": round(state.recent_errors, 4),
                    "pending_requests": state.pending_requests,
                    "models": models,
                }
            )
        return {
            "default_policy": self.config.routing.default_policy,
            "hubs": hubs,
            "recent_decisions": list(self.router.recent),
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.close()
        for backend in self.backends:
            await backend.close()


def _apply_spec(backend: Backend, spec: HubSpec) -> None:
    backend.spec = spec  # type: ignore[attr-defined]
    backend.region = spec.region
    backend.price_per_1k = spec.price_per_1k
    backend.carbon_g_per_kwh = spec.carbon_g_per_kwh
    backend.capacity = spec.max_inflight


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _warmup_sizes(info: ModelInfo) -> list[int]:
    if info.max_batch_size <= 0:
        return [0]
    sizes = {batch_bucket(r) for r in range(1, info.max_batch_size + 1)} | set(info.preferred_batch_sizes)
    return sorted(s for s in sizes if s <= info.max_batch_size)


def _zeros(info: ModelInfo, rows: int) -> dict[str, np.ndarray]:
    inputs = {}
    for tensor in info.inputs:
        dims = [1 if d < 0 else d for d in tensor.shape]
        if rows:
            dims[0] = rows
        dtype = numpy_dtype(tensor.datatype)
        if dtype.kind == "O":
            inputs[tensor.name] = np.full(dims, b"", dtype=object)
        else:
            inputs[tensor.name] = np.zeros(dims, dtype=dtype)
    return inputs
