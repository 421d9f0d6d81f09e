"""The router: which backends serve which model, and which one gets the next batch."""

from __future__ import annotations

import logging
import random

from gateway.backends import Backend
from gateway.catalog import ModelInfo
from gateway.config import Routing
from gateway.errors import ModelNotFound, NoBackend
from gateway.routing.policy import Route, choose
from gateway.routing.state import BackendView, PeakEwma

log = logging.getLogger("railgate.router")


class Router:
    """Holds the backends, the merged model catalog, and per (backend, model) latency EWMAs."""

    def __init__(
        self, backends: list[Backend], config: Routing | None = None, rng: random.Random | None = None
    ) -> None:
        self.backends = backends
        self.config = config or Routing()
        self.rng = rng or random.Random()
        self._turn = 0
        self.catalog: dict[str, ModelInfo] = {}
        self._serving: dict[str, list[Backend]] = {}
        self._latency: dict[tuple[str, str], PeakEwma] = {}

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
            raise ModelNotFound(f"unknown model {name!r}; this gateway serves: {known}")
        return info

    def ready(self, name: str) -> bool:
        return any(b.healthy for b in self._serving.get(name, ()))

    def candidates(self, model: str, route: Route | None = None) -> list[Backend]:
        # The local backend runs where the gateway is: the data does not move, so residency allows it.
        return [
            b
            for b in self._serving.get(model, ())
            if b.healthy and (route is None or b.kind == "local" or route.allows(b.region))
        ]

    def predicted_s(self, backend: str, model: str) -> float | None:
        ewma = self._latency.get((backend, model))
        return ewma.value if ewma else None

    def observe(self, backend: str, model: str, seconds: float) -> None:
        self._latency.setdefault((backend, model), PeakEwma()).update(seconds)

    def choose(self, model: str, budget_s: float, route: Route) -> tuple[Backend, str]:
        """The backend for one batch of ``model`` under ``route``'s policy and residency."""
        backends = {b.name: b for b in self.candidates(model, route)}
        if not backends:
            if route.regions is not None and self.candidates(model):
                allowed = ", ".join(sorted(route.regions))
                raise NoBackend(f"no healthy backend in the allowed regions [{allowed}] serves model {model!r}")
            raise NoBackend(f"no healthy backend serves model {model!r} now")
        views = [
            BackendView(
                b.name,
                b.kind,
                self.predicted_s(b.name, model),
                b.inflight,
                b.capacity,
                b.region,
                b.price_per_1k,
                b.carbon_g_per_kwh,
            )
            for b in backends.values()
        ]
        self._turn += 1
        decision = choose(views, budget_s, route.policy, self.rng, self._turn, self.config.balance_weight)
        return backends[decision.backend.name], decision.reason
