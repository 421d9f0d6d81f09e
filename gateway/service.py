"""The gateway as one object: backends, router, pipeline, health probes and metrics, wired from config.

``Gateway.start`` opens the backends and reads their models; ``close`` drains and releases them. The
HTTP layer (server.py) only calls into this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.backends import Backend
from gateway.backends.local import LocalBackend
from gateway.backends.triton import hub_backend
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router

log = logging.getLogger("railgate.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        backends: list[Backend] = [hub_backend(spec) for spec in config.hubs]
        self.local: LocalBackend | None = LocalBackend(config.local) if config.local.enabled else None
        if self.local is not None:
            backends.append(self.local)
        self.router = Router(backends, config.routing)
        self.pipeline = Pipeline(self.router, config.batching, config.limits, self.metrics)
        self._prober: asyncio.Task[None] | None = None

    @property
    def backends(self) -> list[Backend]:
        return self.router.backends

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        await asyncio.gather(*(self._refresh(b) for b in self.backends))
        self.router.rebuild_catalog()
        if not self.router.catalog:
            log.warning("event=no_models hint=no backend serves any model yet; hubs are probed again")
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever(), name="health-probes")

    async def _refresh(self, backend: Backend) -> bool:
        """Probe one backend; on a transition to healthy, re-read its models. Returns True on change."""
        health = self.config.health
        healthy = await backend.probe(health.probe_timeout_s)
        if healthy and not backend.healthy:
            try:
                await asyncio.wait_for(backend.discover(), health.discover_timeout_s)
            except (Exception, TimeoutError) as exc:  # a hub that cannot list its models is not usable
                log.warning("event=discover_failed backend=%s error=%s", backend.name, exc)
                healthy = False
        changed = healthy != backend.healthy
        if changed:
            log.info("event=backend_%s backend=%s", "ready" if healthy else "unhealthy", backend.name)
        backend.healthy = healthy
        self.metrics.backend_healthy.labels(backend.name).set(1 if healthy else 0)
        return changed

    async def _probe_forever(self) -> None:
        interval = self.config.health.probe_interval_s
        while True:
            await asyncio.sleep(interval)  # the probe period itself, not a synchronisation
            hubs = [b for b in self.backends if b.kind == "hub"]
            changes = await asyncio.gather(*(self._refresh(b) for b in hubs), return_exceptions=True)
            if any(c is True for c in changes):
                self.router.rebuild_catalog()

    def ready(self) -> bool:
        return any(self.router.ready(m) for m in self.router.catalog)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.pipeline.close()
        for backend in self.backends:
            await backend.close()
