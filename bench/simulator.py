"""Routing simulator: the gateway's own router, batch queues, breakers and retry budget under virtual time.

No sockets and no sleeps. Hubs are latency distributions (backbone RTT + service time by batch size,
a number of batches they serve at once), with prices (and a tariff change), carbon intensities and
failures: one hub dies, one turns slow, one flaps. Requests arrive as a Poisson stream with mixed
budgets and residency. For each policy (and the baselines ``nearest-only`` and ``cheapest-only``,
which ignore budgets, load and health) it reports SLO attainment (share answered within budget),
cost per 1,000 inferences, p50/p99 latency, errors, residency breaches and requests lost (never
answered; must be 0).

    python -m bench.simulator [--requests N] [--policies a,b] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.backends import Backend
from gateway.config import Health, HubSpec, Routing, TariffWindow
from gateway.pipeline import budget_class
from gateway.routing.forward import RetryBudget
from gateway.routing.policy import Route
from gateway.routing.router import Router
from gateway.routing.tariff import price_now
from railcore.batching import BatchPolicy, BatchQueue, Flush
from railcore.catalog import ModelInfo, TensorMeta
from railcore.errors import NoBackend

MODEL = ModelInfo("m", ("1",), "sim", (TensorMeta("x", "FP32", (-1, 64)),), (TensorMeta("y", "FP32", (-1, 1)),), 64)
BASELINES = ("nearest-only", "cheapest-only")
POLICIES = ("nearest", "cheapest", "balanced", "greenest", "round_robin", "least_loaded", *BASELINES)


@dataclass(slots=True)
class HubModel:
    """A simulated hub: how long a batch takes there, and when it misbehaves."""

    name: str
    region: str
    rtt_s: float
    base_s: float  # service time of a batch of one
    per_row_s: float  # each extra row
    capacity: int  # batches served at once
    price_per_1k: float
    carbon: float
    tariff: tuple[TariffWindow, ...] = ()
    dies_at: float | None = None
    slow_from: float | None = None
    slow_factor: float = 5.0
    flap_period_s: float | None = None  # down for the first half of every period after flap_from
    flap_from: float = 0.0
    free_at: list[float] = field(default_factory=list)

    def down(self, now: float) -> bool:
        if self.dies_at is not None and now >= self.dies_at:
            return True
        if self.flap_period_s is not None and now >= self.flap_from:
            return ((now - self.flap_from) % self.flap_period_s) < self.flap_period_s / 2
        return False

    def service_s(self, rows: int, now: float, rng: random.Random) -> float:
        s = (self.base_s + self.per_row_s * (rows - 1)) * rng.lognormvariate(0.0, 0.15)
        if self.slow_from is not None and now >= self.slow_from:
            s *= self.slow_factor
        return s


class SimBackend(Backend):
    """The router's view of a simulated hub (the router never calls infer in the simulator)."""

    kind = "hub"

    def __init__(self, hub: HubModel) -> None:
        super().__init__(hub.name, hub.region, hub.price_per_1k, hub.carbon, hub.capacity)
        self.spec = HubSpec(hub.name, "http://sim:1", hub.region, hub.price_per_1k, tariff=hub.tariff)
        self.models = {"m": MODEL}
        self.healthy = True

    async def discover(self):  # pragma: no cover - never called
        return self.models

    async def probe(self, timeout_s: float) -> bool:  # pragma: no cover
        return True

    async def infer(self, *args, **kwargs):  # pragma: no cover
        raise AssertionError("simulated hubs are not called")


def default_hubs(duration_s: float) -> list[HubModel]:
    """Eight hubs in three regions; the cheapest is far, the nearest is dear; some misbehave."""
    return [
        HubModel("west-cheap", "west", 0.060, 0.004, 0.0002, 8, 0.006, 20,
                 tariff=(TariffWindow("00:00", "00:30", 0.010),)),
        HubModel("west-green", "west", 0.055, 0.004, 0.0002, 6, 0.009, 5),
        HubModel("west-big", "west", 0.050, 0.003, 0.0001, 16, 0.012, 40),
        HubModel("central-1", "central", 0.030, 0.004, 0.0002, 6, 0.015, 150,
                 slow_from=duration_s * 0.4, slow_factor=6.0),
        HubModel("central-2", "central", 0.032, 0.004, 0.0002, 6, 0.016, 160,
                 flap_period_s=duration_s / 10, flap_from=duration_s * 0.2),
        HubModel("east-1", "east", 0.010, 0.004, 0.0002, 4, 0.030, 400),
        HubModel("east-2", "east", 0.012, 0.004, 0.0002, 4, 0.028, 380, dies_at=duration_s * 0.5),
        HubModel("east-3", "east", 0.011, 0.004, 0.0002, 4, 0.029, 390),
    ]  # fmt: skip


@dataclass(slots=True)
class Request:
    arrival: float
    deadline: float
    route: Route
    answered: float | None = None
    ok: bool = False
    hub: str | None = None


@dataclass(slots=True)
class Lane:
    route: Route
    budget_class: int
    queue: BatchQueue
    inflight: int = 0
    timer: float | None = None


class Simulation:
    def __init__(self, policy: str, hubs: list[HubModel], requests: int, rate: float, seed: int) -> None:
        self.policy = policy
        self.hubs = {h.name: h for h in hubs}
        self.rng = random.Random(seed)
        self.now = 0.0
        self.router = Router(
            [SimBackend(h) for h in hubs],
            Routing(default_policy=policy if policy in POLICIES[:6] else "nearest"),
            Health(failures_to_eject=3, base_ejection_s=1.0, max_ejection_s=30.0, slow_start_s=5.0),
            rng=random.Random(seed + 1),
            clock=lambda: self.now,
            minute_of_day=lambda: int(self.now / self.duration * 60) % 1440,  # the run spans one hour of tariff
        )
        self.router.rebuild_catalog()
        self.budget = RetryBudget(0.2, 3)
        self.batch_policy = BatchPolicy(64, 0.002, (32,), 2)
        self.lanes: dict[tuple[Route, int], Lane] = {}
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.requests = self._generate(requests, rate, seed)
        self.duration = self.requests[-1].arrival if self.requests else 1.0
        self.cost = 0.0
        self.breaches = 0
        self.retries = 0

    def _generate(self, n: int, rate: float, seed: int) -> list[Request]:
        gen = np.random.default_rng(seed)
        arrivals = np.cumsum(gen.exponential(1.0 / rate, n))
        # Budgets: most generous, some tight enough that only the near hubs meet them.
        budgets = gen.choice([0.040, 0.150, 0.400, 1.000], size=n, p=[0.05, 0.35, 0.40, 0.20])
        regions = gen.choice(3, size=n, p=[0.85, 0.10, 0.05])
        # Data that must stay in the west cannot have a budget below the west's round trip: such
        # tenants run tight work on their own edge. Their budgets come from the looser classes.
        west = regions == 1
        budgets[west] = gen.choice([0.150, 0.400, 1.000], size=int(west.sum()), p=[0.40, 0.40, 0.20])
        routes = {
            0: Route(self.policy if self.policy in POLICIES[:6] else "nearest"),
            1: Route(self.policy if self.policy in POLICIES[:6] else "nearest", frozenset({"west"})),
            2: Route(self.policy if self.policy in POLICIES[:6] else "nearest", frozenset({"east", "central"})),
        }
        return [
            Request(float(a), float(a + b), routes[int(r)])
            for a, b, r in zip(arrivals.tolist(), budgets.tolist(), regions.tolist(), strict=True)
        ]

    def _schedule(self, at: float, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    def run(self) -> dict[str, object]:
        t0 = time.perf_counter()
        i, n = 0, len(self.requests)
        while i < n or self.events:
            if i < n and (not self.events or self.requests[i].arrival <= self.events[0][0]):
                request = self.requests[i]
                i += 1
                self.now = request.arrival
                self._arrive(request)
                continue
            at, _, kind, payload = heapq.heappop(self.events)
            self.now = at
            if kind == "timer":
                lane = payload  # type: ignore[assignment]
                if lane.timer == at:
                    lane.timer = None
                    self._pump(lane)
            elif kind == "done":
                self._complete(*payload)  # type: ignore[misc]
        return self._report(time.perf_counter() - t0)

    def _arrive(self, request: Request) -> None:
        key = (request.route, budget_class(request.deadline - request.arrival))  # as the gateway's pipeline
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(request.route, key[1], BatchQueue(self.batch_policy))
        lane.queue.push(request, 1, request.deadline, self.now)
        self._pump(lane)

    def _pump(self, lane: Lane) -> None:
        queue = lane.queue
        while True:
            for pending in queue.expired(self.now):
                self._answer(pending.item, ok=False)
            decision = queue.decide(self.now, lane.inflight, self._estimate(lane.route))
            if isinstance(decision, Flush):
                batch = [p.item for p in queue.take(decision.count)]
                lane.inflight += 1
                self._send(lane, batch, frozenset())
                continue
            if decision.until is not None and lane.timer != decision.until:
                lane.timer = decision.until
                self._schedule(decision.until, "timer", lane)
            return

    def _estimate(self, route: Route) -> float:
        known = [self.router.predicted_s(b, "m", 8) for b in self.router.candidates("m", route)]
        known = [k for k in known if k is not None]
        return min(known) if known else 0.0

    def _choose(self, batch: list[Request], route: Route, tried: frozenset[str]) -> SimBackend | None:
        earliest = min(r.deadline for r in batch)
        deadline = earliest if earliest > self.now else max(r.deadline for r in batch)  # routed for the tightest
        if self.policy == "nearest-only":
            allowed = [h for h in self.hubs.values() if route.allows(h.region) and h.name not in tried]
            return self.router.backend(min(allowed, key=lambda h: h.rtt_s).name) if allowed else None  # type: ignore
        if self.policy == "cheapest-only":
            allowed = [h for h in self.hubs.values() if route.allows(h.region) and h.name not in tried]
            return self.router.backend(min(allowed, key=lambda h: h.price_per_1k).name) if allowed else None  # type: ignore
        try:
            return self.router.choose("m", deadline - self.now, route, len(batch), tried).backend  # type: ignore
        except NoBackend:
            return None

    def _send(self, lane: Lane, batch: list[Request], tried: frozenset[str]) -> None:
        deadline = max(r.deadline for r in batch)  # cut off at the loosest member, as the gateway does
        backend = self._choose(batch, lane.route, tried) if self.now < deadline else None
        if backend is None:
            lane.inflight -= 1
            for request in batch:
                self._answer(request, ok=False)
            self._pump(lane)
            return
        hub = self.hubs[backend.name]
        if not lane.route.allows(hub.region):
            self.breaches += len(batch)
        backend.inflight += 1
        if hub.down(self.now):  # connection refused after one round trip
            self._schedule(self.now + hub.rtt_s, "done", (lane, batch, tried, backend, False, self.now))
            return
        # The hub serves ``capacity`` batches at once; a batch waits for the first free slot.
        if len(hub.free_at) < hub.capacity:
            hub.free_at.append(0.0)
        slot = min(range(len(hub.free_at)), key=hub.free_at.__getitem__)
        start = max(self.now + hub.rtt_s / 2, hub.free_at[slot])
        finish = start + hub.service_s(len(batch), self.now, self.rng)
        hub.free_at[slot] = finish
        answered = finish + hub.rtt_s / 2
        ok = answered <= deadline  # each member then counts against its own deadline
        # The call is cut at the deadline: a hub call never outlives the batch's deadline.
        self._schedule(min(answered, deadline), "done", (lane, batch, tried, backend, ok, self.now))

    def _complete(self, lane: Lane, batch: list[Request], tried: frozenset[str], backend: SimBackend,
                  ok: bool, sent: float) -> None:  # fmt: skip
        backend.inflight -= 1
        elapsed = self.now - sent
        rows = len(batch)
        if ok:
            self.router.report(backend, "m", rows, elapsed, ok=True)
            price = price_now(backend.spec, "m", self.router.minute_of_day())
            self.cost += price * rows / 1000
            for request in batch:
                request.hub = backend.name
                self._answer(request, ok=True)
            lane.inflight -= 1
            self._pump(lane)
            return
        hub = self.hubs[backend.name]
        failed = hub.down(sent)
        state = self.router.state[backend.name].models.get("m")
        p95 = state.total.p95 if state else None
        if failed or p95 is None or elapsed > p95:
            self.router.report(backend, "m", rows, elapsed, ok=False)
        deadline = max(r.deadline for r in batch)
        if failed and self.now < deadline and self.budget.try_acquire(self._active()):
            self.retries += 1
            self.budget.release()  # the retry is decided at once in virtual time
            self._send(lane, batch, tried | {backend.name})
            return
        for request in batch:
            self._answer(request, ok=False)
        lane.inflight -= 1
        self._pump(lane)

    def _active(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values()) + 64 * sum(
            lane.inflight for lane in self.lanes.values()
        )

    def _answer(self, request: Request, ok: bool) -> None:
        if request.answered is None:
            request.answered = self.now
            request.ok = ok and self.now <= request.deadline

    def _report(self, wall_s: float) -> dict[str, object]:
        answered = [r for r in self.requests if r.answered is not None]
        latency = np.array([r.answered - r.arrival for r in answered if r.ok])  # type: ignore[operator]
        by_hub: dict[str, list[float]] = {}
        for r in answered:
            if r.ok and r.hub:
                by_hub.setdefault(r.hub, []).append(r.answered - r.arrival)  # type: ignore[operator]
        ok = int(sum(r.ok for r in self.requests))
        open_latency = np.array(
            [r.answered - r.arrival for r in answered if r.ok and r.route.regions is None]  # type: ignore[operator]
        )
        served = sum(len(v) for v in by_hub.values()) or 1
        return {
            "policy": self.policy,
            "requests": len(self.requests),
            "wall_s": round(wall_s, 2),
            "slo_attainment": ok / len(self.requests),
            "errors_or_late": len(self.requests) - ok,
            "lost": len(self.requests) - len(answered),
            "residency_breaches": self.breaches,
            "retries": self.retries,
            "cost_per_1k": self.cost / max(ok, 1) * 1000,
            "p50_ms": float(np.percentile(latency, 50) * 1000) if len(latency) else None,
            "p99_ms": float(np.percentile(latency, 99) * 1000) if len(latency) else None,
            "unrestricted_p99_ms": float(np.percentile(open_latency, 99) * 1000) if len(open_latency) else None,
            "misses_by_budget_ms": _misses_by_budget(self.requests),
            "hub_share": {h: round(len(v) / served, 4) for h, v in sorted(by_hub.items())},
            "hub_p99_ms": {h: float(np.percentile(v, 99) * 1000) for h, v in sorted(by_hub.items())},
        }


def _misses_by_budget(requests: list[Request]) -> dict[str, str]:
    counts: dict[int, list[int]] = {}
    for r in requests:
        entry = counts.setdefault(round((r.deadline - r.arrival) * 1000), [0, 0])
        entry[0] += 1
        entry[1] += not r.ok
    return {str(b): f"{m}/{n}" for b, (n, m) in sorted(counts.items())}


def simulate(policy: str, requests: int, rate: float = 4000.0, seed: int = 7) -> dict[str, object]:
    duration = requests / rate
    return Simulation(policy, default_hubs(duration), requests, rate, seed).run()


def markdown(results: list[dict[str, object]]) -> str:
    lines = [
        "| policy | SLO attainment | cost / 1k | p50 ms | p99 ms | errors+late | lost | residency breaches | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['policy']} | {100 * r['slo_attainment']:.3f}% | {r['cost_per_1k']:.5f} | "  # type: ignore[operator]
            f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r['errors_or_late']} | {r['lost']} | "
            f"{r['residency_breaches']} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def _f(value: object) -> str:
    return "-" if value is None else f"{value:.1f}"


def targets(results: list[dict[str, object]]) -> str:
    by = {r["policy"]: r for r in results}
    lines = []
    if "cheapest" in by and "cheapest-only" in by:
        c, base = by["cheapest"], by["cheapest-only"]
        slo = c["slo_attainment"] >= 0.995  # type: ignore[operator]
        ratio = c["cost_per_1k"] / base["cost_per_1k"]  # type: ignore[operator]
        lines.append(f"- cheapest SLO attainment {100 * c['slo_attainment']:.3f}% (target >= 99.5%): "  # type: ignore[operator]
                     f"{'met' if slo else 'MISSED'}")  # fmt: skip
        lines.append(f"- cheapest cost / cheapest-only cost = {ratio:.3f} (target <= 1.10): "
                     f"{'met' if ratio <= 1.10 else 'MISSED'}")  # fmt: skip
    if "nearest" in by:
        n = by["nearest"]
        hub_p99 = n["hub_p99_ms"]  # type: ignore[assignment]
        share = n["hub_share"]  # type: ignore[assignment]
        best = min((h for h in hub_p99 if share.get(h, 0) >= 0.01), key=lambda h: hub_p99[h])  # type: ignore
        ratio = n["unrestricted_p99_ms"] / hub_p99[best]  # type: ignore[operator]
        lines.append(f"- nearest p99 (requests without residency) {n['unrestricted_p99_ms']:.1f} ms vs best hub's "
                     f"own p99 ({best}) {hub_p99[best]:.1f} ms = "
                     f"{ratio:.3f} (target <= 1.05): {'met' if ratio <= 1.05 else 'MISSED'}")  # fmt: skip
    breaches = sum(r["residency_breaches"] for r in results if r["policy"] not in BASELINES)  # type: ignore[misc]
    lost = sum(r["lost"] for r in results)  # type: ignore[misc]
    lines.append(
        f"- residency breaches by railgate policies: {breaches} (target 0): {'met' if breaches == 0 else 'MISSED'}"
    )
    lines.append(f"- requests lost, all runs: {lost} (target 0): {'met' if lost == 0 else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="per policy")
    parser.add_argument("--rate", type=float, default=4000.0, help="requests per virtual second")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("reports/sim"))
    args = parser.parse_args(argv)
    logging.getLogger("railgate").setLevel(logging.ERROR)  # ejections are counted, not logged, here
    results = []
    for policy in args.policies.split(","):
        result = simulate(policy, args.requests, args.rate, args.seed)
        print(f"{policy:14s} {args.requests} requests in {result['wall_s']} s wall", flush=True)
        results.append(result)
    table, summary = markdown(results), targets(results)
    print(f"\n{table}\n\n{summary}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim.json").write_text(json.dumps(results, indent=2))
    (args.out / "sim.md").write_text(f"# Routing simulator\n\n{args.requests} requests per policy, "
                                     f"{args.rate:.0f}/s virtual, seed {args.seed}\n\n{table}\n\n{summary}\n")  # fmt: skip
    _plot(results, args.out / "sim.png")
    return 0


def _plot(results: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        ax.scatter(r["cost_per_1k"], 100 * r["slo_attainment"], s=60)  # type: ignore[operator]
        ax.annotate(str(r["policy"]), (r["cost_per_1k"], 100 * r["slo_attainment"]))  # type: ignore[operator,arg-type]
    ax.set_xlabel("cost per 1,000 inferences")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("Routing policies: cost vs SLO attainment (simulated)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
