"""``railgate demo``: the story of the rail in about a minute, on real processes, every claim measured.

The stack: three real Triton hubs, each behind ``railgate link`` (the backbone's delay): ``east-1``
near the data and dear, ``west-1`` and ``west-2`` far away where power is cheap (``west-2`` spoken
to over gRPC); the gateway in front of them with its local ONNX Runtime backend, two tenants (an
app, and a bank whose data must stay in the west) and an admin key; later an edge device
(``railgate edge``) behind a backbone link of its own. Then five acts, each a heading and the
numbers that prove it:

1. Two regions, two prices: the same traffic under ``nearest`` goes east, under ``cheapest`` west,
   at a fraction of the price (routes per backend, what each paid).
2. Tight budgets are served locally: a budget shorter than any hub's round trip runs on the
   gateway's own ONNX Runtime.
3. Residency: the bank's requests, asking for the nearest hub, never reach the east.
4. A hub killed mid-run: ``west-1`` gets SIGKILL under load; traffic fails over; every request sent
   is answered (sent = answered, lost = 0).
5. The edge keeps answering with the backbone cut: calls offloaded to the hubs until the device's
   link is stopped, then answered on the device.

Finally the dashboard's address (and the admin key it asks for). On a terminal the stack stays up
for a person to look (until Ctrl-C, at most ``--hold-s``); without one (CI, a test) it stops at
once. ``--quick`` shortens every act; ``--json PATH`` writes each act's measured outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.devstack import DevStack, Link, StartError, railgate
from devtools.procs import Child
from devtools.traffic import burst, json_body

MODEL = "digits"
DEFAULT_HOLD_S = 600.0  # on a terminal: the stack stays up this long at most (Ctrl-C stops it sooner)


@dataclass(frozen=True, slots=True)
class HubRole:
    name: str
    region: str
    delay_ms: float  # each way
    price_per_1k: float
    carbon_g_per_kwh: float
    protocol: str = "http"


HUBS = (
    HubRole("east-1", "east", 15, 0.040, 450),
    HubRole("west-1", "west", 25, 0.010, 40),
    HubRole("west-2", "west", 30, 0.014, 30, "grpc"),
)
PRICES = {h.name: h.price_per_1k for h in HUBS}
EDGE_LINK_MS = 5.0  # the device's own backbone link to the gateway, each way
TIGHT_BUDGET_MS = 25  # below east-1's 30 ms round trip: no hub can answer in time


@dataclass(frozen=True, slots=True)
class Plan:
    """How much traffic each act sends (``quick``: a shortened story for tests)."""

    per_policy: int
    tight: int
    residency: int
    kill_s: float
    edge_calls: int
    concurrency: int = 8

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(40, 20, 40, 4.0, 20) if quick else cls(150, 60, 120, 8.0, 60)


def cost(routes: dict[str, int]) -> float:
    """What the requests in ``routes`` were billed at the hubs' list prices (local runs cost nothing here)."""
    return sum(PRICES.get(backend, 0.0) * n for backend, n in routes.items()) / 1000


def routes_text(routes: dict[str, int]) -> str:
    return ", ".join(f"{backend} {n}" for backend, n in routes.items()) or "none"


# -- the story ----------------------------------------------------------------------------------------


class Story:
    """The stack and the acts played on it; ``outcomes`` holds what each act measured."""

    def __init__(self, stack: DevStack, plan: Plan, keys: dict[str, str], repository: Path) -> None:
        self.stack = stack
        self.plan = plan
        self.keys = keys
        self.repository = repository
        self.gateway = stack.gateways[-1]
        self.infer_url = f"{self.gateway.url}/v2/models/{MODEL}/infer"
        self.outcomes: dict[str, dict[str, Any]] = {}
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        self.x, self.y = x.astype(np.float32), y
        self.bodies = [json_body(self.x, i) for i in range(64)]

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    async def play(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            await self.digits()
            for act in (self.prices, self.tight_budgets, self.residency, self.hub_killed, self.edge_cut):
                await act(session)

    async def digits(self) -> None:
        """A few real handwritten digits through the unmodified tritonclient (binary tensors)."""
        import tritonclient.http.aio as tritonaio

        client = tritonaio.InferenceServerClient(self.gateway.address)
        try:
            picks = np.random.default_rng(7).choice(len(self.y), size=6, replace=False)
            tensor = tritonaio.InferInput("pixels", [len(picks), 64], "FP32")
            tensor.set_data_from_numpy(self.x[picks], binary_data=True)
            result = await client.infer(MODEL, [tensor], headers=self.auth("app"))
        finally:
            await client.close()
        labels = result.as_numpy("label")[:, 0]
        right = int((labels == self.y[picks]).sum())
        print(
            f"\nreal handwritten digits through the gateway (tritonclient, binary tensors): {right}/{len(picks)} right"
        )
        print("  " + "  ".join(f"{t}->{p}" for t, p in zip(self.y[picks], labels, strict=True)))

    async def prices(self, session: Any) -> None:
        heading(1, "two regions, two prices")
        by_policy: dict[str, dict[str, Any]] = {}
        for policy in ("nearest", "cheapest"):
            # Light load (4 clients): under more, nearest's queueing estimate spreads it beyond east-1.
            tally = await burst(
                session, self.infer_url, self.bodies, {**self.auth("app"), "X-Route-Policy": policy},
                concurrency=4, count=self.plan.per_policy, budget_ms=1000,
            )  # fmt: skip
            routes = tally.routes()
            p50, p99 = tally.p50_p99_ms()
            by_policy[policy] = {"sent": tally.sent, "answered": tally.answered, "routes": routes, "cost": cost(routes)}
            print(f"  {policy:9s} {tally.answered}/{tally.sent} answered: {routes_text(routes)}; "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; billed {cost(routes):.4f} at the hubs' prices")  # fmt: skip
        near, cheap = by_policy["nearest"]["cost"], by_policy["cheapest"]["cost"]
        ratio = cheap / near if near else float("nan")
        print(f"  => cheapest paid {100 * ratio:.0f}% of nearest for the same {self.plan.per_policy} requests")
        self.outcomes["prices"] = {**by_policy, "cheapest_over_nearest": ratio}

    async def tight_budgets(self, session: Any) -> None:
        heading(2, f"a {TIGHT_BUDGET_MS} ms budget: shorter than any hub's round trip, served locally")
        tally = await burst(
            session, self.infer_url, self.bodies, self.auth("app"),
            concurrency=2, count=self.plan.tight, budget_ms=TIGHT_BUDGET_MS,
        )  # fmt: skip
        routes, errors = tally.routes(), tally.errors()
        reasons = dict(Counter(r.reason for r in tally.replies if r.status == 200).most_common())
        p50, p99 = tally.p50_p99_ms()
        print(f"  {tally.answered}/{tally.sent} answered: {routes_text(routes)} (X-Route-Reason: {routes_text(reasons)}); "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms" + (f"; not in time: {errors}" if errors else ""))  # fmt: skip
        print(f"  => {routes.get('local', 0)} ran on the gateway's own ONNX Runtime, 0 crossed the backbone"
              if set(routes) <= {"local"} else f"  => some crossed the backbone: {routes}")  # fmt: skip
        self.outcomes["tight"] = {"sent": tally.sent, "answered": tally.answered, "routes": routes, "errors": errors}

    async def residency(self, session: Any) -> None:
        heading(3, "residency: the bank's data stays in the west (tenant regions: [west])")
        tally = await burst(
            session, self.infer_url, self.bodies, {**self.auth("bank"), "X-Route-Policy": "nearest"},
            concurrency=self.plan.concurrency, count=self.plan.residency, budget_ms=1000,
        )  # fmt: skip
        routes = tally.routes()
        east = sum(n for backend, n in routes.items() if backend not in ("west-1", "west-2"))
        print(f"  bank, asking for the nearest hub: {tally.answered}/{tally.sent} answered: {routes_text(routes)}")
        print(f"  => {east} reached the east (east-1 is nearest, 15 ms away) or ran outside the west")
        self.outcomes["residency"] = {"sent": tally.sent, "answered": tally.answered, "routes": routes, "outside": east}

    async def hub_killed(self, session: Any) -> None:
        seconds = self.plan.kill_s
        heading(4, f"west-1 killed (SIGKILL) {seconds / 3:.1f} s into {seconds:.0f} s of load")
        hub = self.stack.hubs["west-1"]
        killed_at: list[float] = []

        async def kill_later() -> None:
            await asyncio.sleep(seconds / 3)  # the act's timeline: steady load first
            hub.kill()
            killed_at.append(time.monotonic())

        load = burst(
            session, self.infer_url, self.bodies, {**self.auth("app"), "X-Route-Policy": "cheapest"},
            concurrency=self.plan.concurrency, seconds=seconds, budget_ms=2000,
        )  # fmt: skip
        tally, _ = await asyncio.gather(load, kill_later())
        at = killed_at[0]
        before, after = tally.routes(until=at), tally.routes(since=at)
        errors = tally.errors()
        print(f"  before the kill: {routes_text(before)}")
        print(f"  after the kill:  {routes_text(after)}")
        print(f"  sent {tally.sent}, answered {tally.answered}, errors {sum(errors.values())}{f' {errors}' if errors else ''}, "
              f"lost {tally.lost}")  # fmt: skip
        print(f"  => {'nothing lost' if tally.lost == 0 else f'{tally.lost} LOST'}: "
              f"sent {tally.sent} = answered {tally.answered} + errors {sum(errors.values())} + lost {tally.lost}")  # fmt: skip
        self.outcomes["kill"] = {
            "sent": tally.sent,
            "answered": tally.answered,
            "errors": errors,
            "lost": tally.lost,
            "before": before,
            "after": after,
            "lost_detail": [r.detail for r in tally.replies if r.status == 0][:3],
        }

    async def edge_cut(self, session: Any) -> None:
        heading(5, "an edge device keeps answering with the backbone cut")
        link = self.stack.link(self.gateway.port, EDGE_LINK_MS)
        edge = self.start_edge(link)
        url = f"{edge}/v2/models/{MODEL}/infer"
        n = self.plan.edge_calls
        up = await burst(session, url, self.bodies, {}, concurrency=2, count=n, budget_ms=1000)
        link.stop()  # the device's backbone is gone
        cut = await burst(session, url, self.bodies, {}, concurrency=2, count=n, budget_ms=1000)
        print(f"  backbone up:  {up.answered}/{up.sent} answered: {routes_text(up.routes())}")
        print(f"  backbone cut: {cut.answered}/{cut.sent} answered: {routes_text(cut.routes())}, lost {cut.lost}")
        ok = cut.answered == cut.sent
        print(f"  => {'the device answered every call itself' if ok else 'some calls went unanswered'}")
        self.outcomes["edge"] = {
            "up": {"sent": up.sent, "answered": up.answered, "routes": up.routes()},
            "cut": {"sent": cut.sent, "answered": cut.answered, "routes": cut.routes(), "lost": cut.lost},
        }

    def start_edge(self, link: Link) -> str:
        """``railgate edge`` (a device) whose gateway is behind ``link``; its URL."""
        config = {
            "gateway_url": link.url,
            "gateway_api_key": self.keys["app"],
            "repository": str(self.repository),
            "models": [MODEL],
            "region": "device",
            "sync": {"enabled": False},
            "probe_interval_s": 0.2,
            "circuit": {"failure_threshold": 2, "backoff_s": 0.5, "max_backoff_s": 5.0},
            "listen": {"host": "127.0.0.1", "port": 0},
        }
        path = self.stack.workdir / "edge.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        args = railgate("edge", "--config", str(path), "--log-level", "WARNING")
        child = self.stack.child(Child(args, "edge", ready_line=r"railgate edge serving (http://\S+)"))
        assert child.ready_match is not None
        return child.ready_match.group(1)


def heading(number: int, text: str) -> None:
    print(f"\nAct {number}: {text}")


async def backend_batches(url: str) -> dict[str, tuple[float, float]]:
    """Per backend: batches and rows, read from the gateway's own /metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as reply:
        text = await reply.text()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("railgate_batch_size_count", "railgate_batch_size_sum"):
                entry = out.setdefault(sample.labels["backend"], [0.0, 0.0])
                entry[sample.name.endswith("_sum")] += sample.value
    return {backend: (b, r) for backend, (b, r) in sorted(out.items())}


# -- the command --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--quick", action="store_true", help="a shortened story (fewer requests per act)")
    parser.add_argument("--json", type=Path, default=None, help="write each act's measured outcome here")
    parser.add_argument(
        "--hold-s", type=float, default=None,
        help=f"keep the stack up this long after the story for the dashboard (default: {DEFAULT_HOLD_S:g} s, "
        "or until Ctrl-C, on a terminal; 0 without one)",
    )  # fmt: skip


def gateway_config(keys: dict[str, str], ports: dict[str, str]) -> dict[str, Any]:
    from gateway.tenants import hash_key

    return {
        "hubs": [
            {
                "name": h.name,
                "url": ports[h.name],
                "region": h.region,
                "price_per_1k": h.price_per_1k,
                "carbon_g_per_kwh": h.carbon_g_per_kwh,
                "protocol": h.protocol,
            }
            for h in HUBS
        ],
        "local": {"enabled": True, "models": [MODEL], "region": "gateway"},
        "health": {"probe_interval_s": 0.5, "probe_timeout_s": 0.5, "failures_to_eject": 2},
        "tenants": [
            {"name": "app", "keys": [hash_key(keys["app"])]},
            {"name": "bank", "keys": [hash_key(keys["bank"])], "regions": ["west"]},
        ],
        "admin_keys": [hash_key(keys["admin"])],
    }


def start_stack(repository: Path, keys: dict[str, str]) -> DevStack:
    stack = DevStack(repository)
    with stack.closed_on_error():
        ports = {}
        for h in HUBS:
            grpc = h.protocol == "grpc"
            hub = stack.hub(h.name, grpc=grpc, models=(MODEL,))
            upstream = hub.config.grpc_port if grpc else hub.config.http_port
            assert upstream is not None
            link = stack.link(upstream, h.delay_ms)
            ports[h.name] = link.address if grpc else link.url
        stack.gateway(gateway_config(keys, ports))
    return stack


def run(args: argparse.Namespace) -> int:
    from gateway.tenants import new_key

    plan = Plan.make(getattr(args, "quick", False))
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C: every process stopped
    # Ctrl-C is KeyboardInterrupt even when started with SIGINT ignored (a shell's background job, a CI
    # runner): Python keeps an inherited ignore, and the held stack would then never stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    keys = {"app": new_key(), "bank": new_key(), "admin": new_key()}
    print("the rail: data in the east, cheap GPU hubs in the west")
    for h in HUBS:
        print(f"  hub {h.name:7s} region {h.region:5s} {h.delay_ms:3g} ms each way over {h.protocol:4s} "
              f"price {h.price_per_1k:.3f}/1k  carbon {h.carbon_g_per_kwh:g} g/kWh")  # fmt: skip
    print("starting 3 real Triton hubs, each behind `railgate link`, and the gateway (local ONNX Runtime on) ...")
    t0 = time.monotonic()
    try:
        stack = start_stack(args.repository, keys)
    except StartError as exc:
        print(f"railgate demo: {exc}")
        return 1
    except KeyboardInterrupt:  # what had started is stopped already (closed_on_error)
        print("\ninterrupted while starting; all processes stopped")
        return 130
    verdicts: list[str] = []
    try:
        print(f"stack ready in {time.monotonic() - t0:.1f} s: gateway {stack.gateway_url}")
        story = Story(stack, plan, keys, args.repository)
        asyncio.run(story.play())
        batches = asyncio.run(backend_batches(stack.gateway_url))
        print("\nbatches per backend (the gateway's /metrics): "
              + ", ".join(f"{b} {n:.0f} batches / {r:.0f} rows" for b, (n, r) in batches.items()))  # fmt: skip
        verdicts = judge(story.outcomes)  # the story is told: Ctrl-C from here on only ends the hold
        print("\nthe story, measured:")
        for line in verdicts:
            print(f"  {line}")
        print(f"\ndashboard: {stack.gateway_url}/dashboard  (admin key: {keys['admin']})")
        print(f"story told in {time.monotonic() - t0:.0f} s")
        if args.json is not None:
            args.json.write_text(json.dumps({"outcomes": story.outcomes, "verdicts": verdicts}, indent=2))
        hold(args.hold_s)
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        stack.close()
    print("all processes stopped")
    if not verdicts:  # interrupted before the end of the story
        return 130
    return 0 if all(v.startswith("ok") for v in verdicts) else 1


def judge(outcomes: dict[str, dict[str, Any]]) -> list[str]:
    """One line per act: ``ok ...`` where its numbers prove the claim, ``NOT SHOWN ...`` where not."""

    def line(ok: bool, text: str) -> str:
        return f"{'ok' if ok else 'NOT SHOWN'}: {text}"

    out = []
    if "prices" in outcomes:
        p = outcomes["prices"]
        near, cheap = p["nearest"]["routes"], p["cheapest"]["routes"]
        shown = _top(near) == "east-1" and _top(cheap) == "west-1" and p["cheapest_over_nearest"] < 1
        out.append(line(shown, f"nearest went to {_top(near)}, cheapest to {_top(cheap)}, "
                               f"at {100 * p['cheapest_over_nearest']:.0f}% of the price"))  # fmt: skip
    if "tight" in outcomes:
        t = outcomes["tight"]
        hubs = sum(n for b, n in t["routes"].items() if b != "local")
        out.append(line(hubs == 0 and t["routes"].get("local", 0) > 0,
                        f"{t['routes'].get('local', 0)}/{t['sent']} tight-budget requests ran locally, {hubs} on a hub"))  # fmt: skip
    if "residency" in outcomes:
        r = outcomes["residency"]
        out.append(line(r["outside"] == 0 and r["answered"] > 0,
                        f"the bank's {r['answered']} answers all came from the west, {r['outside']} from elsewhere"))  # fmt: skip
    if "kill" in outcomes:
        k = outcomes["kill"]
        out.append(line(k["lost"] == 0 and k["answered"] > 0 and k["after"].get("west-1", 0) == 0,
                        f"west-1 killed: sent {k['sent']}, answered {k['answered']}, lost {k['lost']}; "
                        f"after the kill {routes_text(k['after'])}"))  # fmt: skip
    if "edge" in outcomes:
        up, cut = outcomes["edge"]["up"], outcomes["edge"]["cut"]
        remote = sum(n for b, n in up["routes"].items() if b != "local")
        out.append(line(remote > 0 and cut["answered"] == cut["sent"] > 0 and set(cut["routes"]) == {"local"},
                        f"edge: {remote}/{up['sent']} offloaded with the backbone up; cut, "
                        f"{cut['answered']}/{cut['sent']} answered on the device"))  # fmt: skip
    return out


def _top(routes: dict[str, int]) -> str | None:
    return max(routes, key=lambda b: routes[b]) if routes else None


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise KeyboardInterrupt


def hold(hold_s: float | None) -> None:
    """On a terminal keep the stack up for a person (until Ctrl-C, at most ``hold_s``); otherwise return."""
    if hold_s is None:
        hold_s = DEFAULT_HOLD_S if sys.stdin.isatty() else 0.0
    if hold_s <= 0:
        return
    print(f"the stack stays up for {hold_s:g} s for the dashboard: Ctrl-C stops it")
    threading.Event().wait(hold_s)  # a person's time to look; Ctrl-C (KeyboardInterrupt) ends it
