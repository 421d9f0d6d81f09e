"""One simulated run: the production pipeline, forwarder and router on a virtual-time loop.

Requests arrive on the loop's clock and each is submitted with ``Pipeline.submit`` exactly as the
HTTP front does it (arrival time plus budget as the deadline, the route, the priority), so the
batch queues, the flush policy, routing, failover, the retry budget and the breakers are the ones
the gateway runs. Only the hubs (``SimHub``) and the clock are simulated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import numpy as np

from bench.sim.clock import VirtualTimeLoop
from bench.sim.hubs import BASELINE_RANKS, FixedOrderRouter, Ledger, SimHub
from bench.sim.oracle import Oracle
from bench.sim.scenario import MODEL, Workload, percentile_ms
from gateway.config import Admission, Batching, Health, Limits, Priority, Routing
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.policy import POLICIES as ROUTER_POLICIES
from gateway.routing.policy import Policy
from gateway.routing.router import Router
from railcore.errors import RailgateError
from railcore.protocol.types import InferRequest, Tensor

BASELINES = tuple(BASELINE_RANKS)
POLICIES: tuple[str, ...] = (*(str(p) for p in ROUTER_POLICIES), *BASELINES)
HEALTH = Health(failures_to_eject=3, base_ejection_s=1.0, max_ejection_s=30.0, slow_start_s=5.0)
BATCHING = Batching(max_batch_size=64, max_queue_delay_ms=2.0)  # max_inflight_batches: the default, as shipped

OK = 200
LATE = 0  # answered, but after its own deadline
UNANSWERED = -1


def _never_gone() -> bool:
    return False


@dataclass(slots=True)
class Outcome:
    """Per request: its status (an HTTP status, ``LATE`` or ``UNANSWERED``), when, and which hub."""

    status: np.ndarray
    answered: np.ndarray
    hub: np.ndarray
    wrong_rows: int = 0  # answers that carried another request's row: a batching bug

    @classmethod
    def empty(cls, n: int) -> Outcome:
        return cls(np.full(n, UNANSWERED, np.int16), np.full(n, np.nan), np.full(n, -1, np.int8))


class Simulation:
    """The gateway's request path under one policy, over one workload.

    ``router_class`` lets a test put a different router under the same pipeline (the baselines use
    ``FixedOrderRouter``); everything else is the production code.
    """

    def __init__(self, policy: str, world: Workload, seed: int = 7, router_class: type[Router] = Router) -> None:
        self.policy = policy
        self.world = world
        self.seed = seed
        self.router_class = router_class
        self.ledger = Ledger.of(world)
        self.outcome = Outcome.empty(len(world))
        self.wall_s = self.cpu_s = 0.0
        self._clients: set[asyncio.Task[None]] = set()
        self._arrived = 0
        self._ids = np.arange(len(world), dtype=np.int64).reshape(-1, 1)
        self._done: asyncio.Future[None] | None = None

    def run(self) -> Simulation:
        t0, c0 = time.perf_counter(), time.process_time()
        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
        self.wall_s, self.cpu_s = time.perf_counter() - t0, time.process_time() - c0
        return self

    def _make_router(self, loop: asyncio.AbstractEventLoop) -> Router:
        hubs = [SimHub(h, i, self.ledger) for i, h in enumerate(self.world.hubs)]
        for hub in hubs:
            hub.healthy = True
        # A baseline's batches still go through a lane keyed by a policy: nearest, which it ignores.
        policy = Policy(self.policy) if self.policy in ROUTER_POLICIES else Policy.NEAREST
        kwargs = dict(
            config=Routing(default_policy=policy),
            health=HEALTH,
            rng=random.Random(self.seed + 1),
            clock=loop.time,
            minute_of_day=lambda: self.world.minute_of_day(loop.time()),
        )
        if self.policy in BASELINE_RANKS:
            rank, reason = BASELINE_RANKS[self.policy]
            router: Router = FixedOrderRouter(hubs, rank, reason, **kwargs)  # type: ignore[arg-type]
        else:
            router = self.router_class(hubs, **kwargs)  # type: ignore[arg-type]
        router.rebuild_catalog()
        return router

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        self.router = self._make_router(loop)
        self.pipeline = Pipeline(self.router, BATCHING, Limits(), Metrics(), admission=Admission())
        self._info = self.router.model(MODEL.name)
        self._routes = self.world.routes(Policy(self.router.config.default_policy))
        self._done = loop.create_future()
        loop.on_stall = self._stalled
        if len(self.world):
            loop.call_at(float(self.world.arrival[0]), self._arrive)
        else:
            self._done.set_result(None)
        await self._done
        for task in self._clients:  # only after a stall: they wait for what never comes
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self.pipeline.close()

    def _arrive(self) -> None:
        """One arrival: its client starts now, the next arrival is booked on the clock."""
        i = self._arrived
        self._arrived += 1
        task = asyncio.get_running_loop().create_task(self._client(i))
        self._clients.add(task)
        task.add_done_callback(self._client_done)
        if self._arrived < len(self.world):
            asyncio.get_running_loop().call_at(float(self.world.arrival[self._arrived]), self._arrive)

    def _client_done(self, task: asyncio.Task[None]) -> None:
        self._clients.discard(task)
        if not self._clients and self._arrived == len(self.world) and self._done and not self._done.done():
            self._done.set_result(None)

    def _stalled(self) -> bool:
        if self._done is None or self._done.done():
            return False
        self._done.set_result(None)
        return True

    async def _client(self, i: int) -> None:
        """What the HTTP front does with one request once it is decoded and validated."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + float(self.world.budget[i])
        request = InferRequest(MODEL.name, "", [Tensor("id", "INT64", (1, 1), self._ids[i : i + 1])])
        outcome = self.outcome
        try:
            result = await self.pipeline.submit(
                request, self._info, 1, deadline, _never_gone, self._routes[self.world.residency[i]], Priority.NORMAL
            )
        except RailgateError as exc:
            outcome.status[i] = exc.status
            outcome.answered[i] = loop.time()
            return
        now = loop.time()
        outcome.answered[i] = now
        outcome.status[i] = OK if now <= deadline else LATE
        backend = self.router.backend(result.backend)
        outcome.hub[i] = backend.index if isinstance(backend, SimHub) else -1
        if int(result.outputs["y"][0, 0]) != i:
            outcome.wrong_rows += 1

    # -- the report ------------------------------------------------------------------------------

    def retries(self) -> int:
        return int(
            sum(
                s.value for m in self.pipeline.metrics.retries.collect() for s in m.samples if s.name.endswith("_total")
            )
        )

    def report(self, oracle: Oracle) -> dict[str, object]:
        w, o = self.world, self.outcome
        n = len(w)
        ok = o.status == OK
        latency = o.answered - w.arrival
        served = ok & (o.hub >= 0)
        names = [h.name for h in w.hubs]
        hub_share = {
            names[h]: round(int(c) / max(int(served.sum()), 1), 4)
            for h, c in enumerate(np.bincount(o.hub[served], minlength=len(names)))
            if c
        }
        hub_p99 = {
            names[h]: percentile_ms(latency[served & (o.hub == h)], 99)
            for h in range(len(names))
            if (served & (o.hub == h)).any()
        }
        errors = {str(s): int(c) for s, c in zip(*np.unique(o.status[~ok], return_counts=True), strict=True)}
        oracle_cost = oracle.cost_of(ok)
        return {
            "policy": self.policy,
            "requests": n,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),  # the wall time counts other processes on a shared machine too
            "requests_per_s": round(n / self.cpu_s) if self.cpu_s else None,  # per CPU second
            "slo_attainment": float(ok.mean()) if n else 0.0,
            "errors_or_late": int(n - ok.sum()),
            "errors_by_status": {
                ("late" if k == str(LATE) else "lost" if k == str(UNANSWERED) else k): v for k, v in errors.items()
            },
            "lost": int((o.status == UNANSWERED).sum()),
            "wrong_rows": o.wrong_rows,
            "residency_breaches": self.ledger.breaches,
            "retries": self.retries(),
            "cost_per_1k": self.ledger.cost / max(int(ok.sum()), 1) * 1000,
            # What this policy paid over what the clairvoyant would have paid for the very requests
            # this policy answered in time: >= 1 by construction.
            "cost_ratio": self.ledger.cost / oracle_cost if oracle_cost else None,
            "beyond_oracle": int((ok & ~oracle.feasible).sum()),  # answered in time where no hub could: 0
            "p50_ms": percentile_ms(latency[ok], 50),
            "p99_ms": percentile_ms(latency[ok], 99),
            "unrestricted_p99_ms": percentile_ms(latency[ok & (w.residency == 0)], 99),
            "misses_by_budget_ms": _misses_by_budget(w.budget, ok),
            "hub_share": hub_share,
            "hub_p99_ms": hub_p99,
        }


def _misses_by_budget(budget: np.ndarray, ok: np.ndarray) -> dict[str, str]:
    out = {}
    for b in np.unique(budget):
        members = budget == b
        out[str(round(float(b) * 1000))] = f"{int((members & ~ok).sum())}/{int(members.sum())}"
    return out


def quiet_logs() -> None:
    logging.getLogger("railgate").setLevel(logging.ERROR)  # ejections are counted, not logged, here
