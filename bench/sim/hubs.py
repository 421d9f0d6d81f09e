"""Simulated hubs behind the gateway's own ``Backend`` interface, and the two naive baselines.

A ``SimHub`` is what the production forwarder calls: ``infer`` sleeps the batch's sampled latency
on the event loop's (virtual) clock, refuses after one round trip while the hub is down, and gives
up at the deadline as the Triton client does. It also checks, from the request ids the batch
carries, that none of its members was barred from the hub's region: a breach would be the
production router's, seen from the far side.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.sim.scenario import MODEL, HubModel, Workload
from gateway.backends import Backend, BackendKind
from gateway.routing.policy import Route
from gateway.routing.router import Router, Selection
from railcore.catalog import ModelInfo
from railcore.errors import DeadlineExceeded, HubUnreachable, NoBackend


@dataclass(slots=True)
class Ledger:
    """What the hubs saw: the bill (rows served x price at the time), calls, residency breaches."""

    world: Workload
    prices: np.ndarray  # (hubs, 1440)
    allowed: np.ndarray  # (residency classes, hubs)
    barred: np.ndarray  # (hubs, requests): the request may not run on the hub
    cost: float = 0.0
    breaches: int = 0
    calls: int = 0

    @classmethod
    def of(cls, world: Workload) -> Ledger:
        allowed = world.allowed()
        return cls(world, world.price_table(), allowed, np.ascontiguousarray(~allowed[world.residency].T))

    def check_residency(self, ids: np.ndarray, hub: int) -> None:
        self.calls += 1
        barred = self.barred[hub]
        if len(ids) == 1:
            self.breaches += bool(barred[ids[0]])
        else:
            self.breaches += int(np.count_nonzero(barred[ids]))

    def charge(self, hub: int, rows: int, now: float) -> float:
        price = float(self.prices[hub, self.world.minute_of_day(now)])
        self.cost += price * rows / 1000
        return price


class SimHub(Backend):
    """A hub on the virtual backbone: RTT, ``capacity`` batches served at once, noise, outages."""

    kind = BackendKind.HUB

    def __init__(self, hub: HubModel, index: int, ledger: Ledger) -> None:
        super().__init__(hub.name, hub.region, hub.price_per_1k, hub.carbon, hub.capacity)
        self.hub = hub
        self.index = index
        self.spec = hub.spec  # the router prices hubs by their spec's tariff
        self.models: dict[str, ModelInfo] = {MODEL.name: MODEL}
        self.ledger = ledger
        self._noise = np.ascontiguousarray(ledger.world.noise[:, index])
        self._free_at = [0.0] * hub.capacity  # a heap: when each of the hub's slots is next free

    async def discover(self) -> dict[str, ModelInfo]:
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        return not self.hub.down(asyncio.get_running_loop().time())

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float,
        timeout_s: float | None = None,  # a simulated hub has no queue policy: the deadline is enough
        trace: Any = None,  # the simulator runs untraced
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        ids = inputs["id"][:, 0]
        self.ledger.check_residency(ids, self.index)
        if deadline <= sent:
            raise DeadlineExceeded(f"deadline passed before the batch reached hub {self.name}")
        self.inflight += 1
        try:
            async with asyncio.timeout_at(deadline):
                if self.hub.down(sent):
                    await asyncio.sleep(self.hub.rtt_s)
                    raise HubUnreachable(f"hub {self.name} refused the connection")
                await asyncio.sleep(self._answered_at(ids, sent) - sent)
        except TimeoutError:
            raise DeadlineExceeded(f"hub {self.name} did not answer {model!r} before the deadline") from None
        finally:
            self.inflight -= 1
        self.ledger.charge(self.index, len(ids), loop.time())
        return {"y": inputs["id"]}

    def _answered_at(self, ids: np.ndarray, sent: float) -> float:
        """When the answer gets back: the batch waits for the first free slot, which it then holds
        until it is done, even if the gateway stops waiting (as a queued Triton request does)."""
        hub = self.hub
        noise = float(self._noise[ids].max()) if len(ids) > 1 else float(self._noise[ids[0]])
        start = max(sent + hub.rtt_s / 2, self._free_at[0])
        finish = start + hub.service_s(len(ids), noise, sent)
        heapq.heapreplace(self._free_at, finish)
        return finish + hub.rtt_s / 2


class FixedOrderRouter(Router):
    """A baseline: always the first allowed hub in a fixed order, blind to budget, load and health.

    Only ``choose`` differs from the production router: batches, failover and the retry budget are
    still the production pipeline's and forwarder's, and residency is still respected.
    """

    def __init__(self, backends: list[Backend], rank: Callable[[SimHub], float], reason: str, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.rank = rank
        self.reason = reason

    def choose(
        self, model: str, budget_s: float, route: Route, rows: int = 1, exclude: frozenset[str] = frozenset()
    ) -> Selection:
        allowed = [
            b for b in self.backends if isinstance(b, SimHub) and b.name not in exclude and route.allows(b.region)
        ]
        if not allowed:
            raise NoBackend(f"no hub left in the allowed regions serves model {model!r}")
        backend = min(allowed, key=self.rank)
        # The breaker is not asked, only told: it still hands out the ticket its outcome settles.
        return Selection(backend, self.reason, None, self.breakers[backend.name].on_send(self.clock()))


BASELINE_RANKS: dict[str, tuple[Callable[[SimHub], float], str]] = {
    "nearest-only": (lambda b: b.hub.rtt_s, "nearest-only: least round trip on paper"),
    "cheapest-only": (lambda b: b.hub.price_per_1k, "cheapest-only: lowest list price"),
}
