"""The gateway as one object: backends, router, pipeline, tenants, metrics and the inference service,
wired from config, with the lifecycle that owns their background tasks.

``start`` opens the backends and reads their models, then starts the probes; ``close`` drains the
pipeline and releases the backends. ``reload`` swaps the hub table (``reload.py``), ``drain`` and
``undrain`` take one hub out of rotation and back. The fronts call into ``service`` and this
object only; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.backends import Backend, BackendKind
from gateway.backends.local import LocalBackend
from gateway.backends.triton import hub_backend
from gateway.config import GatewayConfig, HubSpec, load_config
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.probes import Probes
from gateway.reload import apply_reload, plan_reload
from gateway.routing.router import Router
from gateway.service import InferenceService
from gateway.state.build import build_state
from gateway.statistics import Statistics
from gateway.status import render_status
from gateway.tenants import Tenants
from railcore.tracing import start_tracing

log = logging.getLogger("railgate.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.statistics = Statistics()
        # OpenTelemetry (None when tracing.otlp_endpoint is unset: the hot paths then hold tracer None).
        self.tracing = start_tracing(config.tracing, "railgate-gateway")
        self.tracer = self.tracing.tracer if self.tracing is not None else None
        self.local: LocalBackend | None = LocalBackend(config.local) if config.local.enabled else None
        backends: list[Backend] = [hub_backend(spec) for spec in config.hubs]
        if self.local is not None:
            backends.append(self.local)
        self.router = Router(backends, config.routing, config.health)
        self.probes = Probes(self.router, self.metrics, config.health)
        self.router.on_state_change = self.probes.on_breaker_change
        self.pipeline = Pipeline(
            self.router,
            config.batching,
            config.limits,
            self.metrics,
            config.routing,
            config.admission,
            statistics=self.statistics,
            tracer=self.tracer,
        )
        self.tenants = Tenants(config.tenants, config.admin_keys)
        self.state = build_state(config.state, self.tenants, self.metrics)
        self.service = InferenceService(
            self.router,
            self.pipeline,
            self.tenants,
            self.metrics,
            limits=config.limits,
            deadlines=config.deadlines,
            default_policy=config.routing.default_policy,
            statistics=self.statistics,
            state=self.state,
        )
        self.draining = False  # set on SIGTERM: readiness fails while accepted requests finish
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def backends(self) -> list[Backend]:
        return self.router.backends

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        await self.state.start()
        for backend in self.backends:
            await backend.start()
        await asyncio.gather(*(self.probes.refresh(b) for b in self.backends))
        self.router.rebuild_catalog()
        if not self.router.catalog:
            log.warning("event=no_models hint=no backend serves any model yet; hubs are probed again")
        self._spawn(self.probes.probe_forever(), "health-probes")
        self._spawn(self.probes.statistics_forever(), "hub-statistics")

    def ready(self) -> bool:
        return not self.draining and any(self.router.ready(m) for m in self.router.catalog)

    def status(self) -> dict[str, Any]:
        return render_status(self.router, self.config.routing.default_policy)

    def statistics_for(
        self, model: str = "", version: str = "", visible: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """Triton's statistics extension reply for every served model (of ``visible``, when given: a
        tenant's models), or one (already looked up)."""
        catalog = self.router.catalog
        versions = {name: info.versions for name, info in catalog.items() if visible is None or name in visible}
        return self.statistics.render(versions, only=model, version=version)

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
        plan = plan_reload(self.config.hubs, new.hubs)
        await apply_reload(plan, self)
        self.config = dataclasses.replace(self.config, hubs=new.hubs)
        self.router.rebuild_catalog()
        changes = plan.changes()
        log.info(
            "event=hubs_reloaded added=%s removed=%s updated=%s",
            changes["added"],
            changes["removed"],
            changes["updated"],
        )
        return changes

    async def add_hub(self, spec: HubSpec) -> None:
        """Start a hub, add it to the router and probe it (a healthy one is warmed up first)."""
        backend = hub_backend(spec)
        await backend.start()
        self.router.add(backend)
        await self.probes.refresh(backend)

    def retire(self, name: str) -> None:
        """Take a hub out of rotation now; close it once its batches in flight are answered."""
        backend = self.router.backend(name)
        if backend is None:
            return
        self.router.draining.add(name)
        self._spawn(self._close_when_idle(backend), f"retire-{name}")

    async def _close_when_idle(self, backend: Backend) -> None:
        # In-flight batches end by their deadlines at the latest, so this wait is bounded too.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.deadlines.max_budget_ms / 1000):
                await backend.wait_idle()
        self.router.remove(backend.name)
        await backend.close()

    def drain(self, name: str) -> Backend:
        backend = self.router.backend(name)
        if backend is None or backend.kind != BackendKind.HUB:
            raise KeyError(name)
        self.router.draining.add(name)
        log.info("event=hub_draining hub=%s inflight=%d", name, backend.inflight)
        return backend

    def undrain(self, name: str) -> Backend:
        backend = self.router.backend(name)
        if backend is None or backend.kind != BackendKind.HUB:
            raise KeyError(name)
        self.router.draining.discard(name)
        log.info("event=hub_undrained hub=%s", name)
        return backend

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.close()
        await self.state.close()  # after the pipeline: what it answered is billed first
        for backend in self.backends:
            await backend.close()
        if self.tracing is not None:  # the last spans are exported (blocking: off the loop)
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)
