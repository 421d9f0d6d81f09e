"""Fleet state figures: ``python -m bench.fleet`` (and the ``state`` section of ``make bench``).

- *shared limit*: two gateway processes on one real redis-server share a tenant limit (100 req/s,
  burst 100); 12 clients hammer both for 6 s. Admitted calls against the ~700 the limit allows
  (burst + rate x elapsed); each gateway's ``/v1/usage`` against what the clients saw answered.
- *SIGKILL*: a gateway with the SQLite ledger killed under load: answered calls vs rows in its ledger.
- *Redis restart*: two gateways on Redis, Redis stopped and restarted mid-load: answered calls vs the
  fleet's ``/v1/usage``, and the rows journalled and replayed.
- *latency*: p50 of a tenant's call at c=1 and c=16 with limits in memory and with Redis state
  (rate limited, leases in use); the added p50 is their difference (median over runs). End to end,
  on a shared 2-core machine, that difference drowns in the noise of a ~1-10 ms call; so the state's
  own part is timed too, in process (*state p50*): admit + bill of one call, memory vs Redis vs
  SQLite, sequentially (c=1) and 16 at a time (c=16).

Every process it starts (Redis, gateways) is stopped by its handle before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from devtools.devstack import Gateway
from devtools.redis_server import RedisServer, redis_binary
from gateway.state.ledger import read_rows
from gateway.tenants import hash_key, new_key

KEY, ADMIN = new_key(), new_key()
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]})


def gateway_config(state: dict[str, Any], **tenant: Any) -> dict[str, Any]:
    return {
        "local": {"enabled": True},
        "admin_keys": [hash_key(ADMIN)],
        "tenants": [{"name": "acme", "keys": [hash_key(KEY)], **tenant}],
        "state": state,
    }


@contextlib.contextmanager
def running(*services: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


async def hammer(
    urls: list[str], clients: int, seconds: float, stop: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """``clients`` closed-loop clients over ``urls`` (in turn) for ``seconds``: statuses, answered ids, latencies."""
    statuses: dict[int, int] = {}
    answered: list[str] = []
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        n = 0
        while time.monotonic() < end and not stop():
            n += 1
            request_id = f"c{i}-{n}"
            body = BODY[:-1] + f', "id": "{request_id}"}}'
            url = urls[(i + n) % len(urls)]
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/v2/models/digits/infer", data=body, headers=headers) as reply:
                    await reply.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                errors += 1
                await asyncio.sleep(0.01)  # a dead gateway refuses at once: do not spin
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            if reply.status == 200:
                answered.append(request_id)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        elapsed = time.monotonic() - started
    return {"statuses": statuses, "answered": answered, "latencies": latencies, "errors": errors, "elapsed_s": elapsed}


async def usage(url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/usage", headers=headers) as reply:
        return dict((await reply.json())["acme"])


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as reply:
        text = await reply.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def shared_limit(workdir: Path, redis: RedisServer, seconds: float = 6.0) -> dict[str, Any]:
    limit = {"rate_per_s": 100, "burst": 100}
    gws = [Gateway(workdir, gateway_config({"redis_url": redis.url}, **limit)).start() for _ in range(2)]
    with running(*gws):
        run = asyncio.run(hammer([g.url for g in gws], 12, seconds))
        fleet = [asyncio.run(usage(g.url)) for g in gws]
    admitted = run["statuses"].get(200, 0)
    allowed = limit["burst"] + limit["rate_per_s"] * run["elapsed_s"]
    return {
        "clients": 12,
        "seconds": round(run["elapsed_s"], 2),
        "calls": sum(run["statuses"].values()),
        "admitted": admitted,
        "refused_429": run["statuses"].get(429, 0),
        "allowed": round(allowed),
        "usage_requests": [u["requests"] for u in fleet],
        "usage_equals_answered": all(u["requests"] == admitted for u in fleet),
    }


def sigkill(workdir: Path, seconds: float = 3.0) -> dict[str, Any]:
    data_dir = workdir / "sigkill"
    gw = Gateway(workdir, gateway_config({"data_dir": str(data_dir)})).start()
    killed = False

    def kill_after() -> bool:
        nonlocal killed
        if not killed and time.monotonic() > kill_at:
            gw.child.kill()
            killed = True
        return False

    kill_at = time.monotonic() + seconds
    with running(gw):
        run = asyncio.run(hammer([gw.url], 8, seconds + 1.0, stop=kill_after))
    billed = {row.request_id for row in read_rows(data_dir / "ledger.sqlite3")}
    answered = set(run["answered"])
    return {
        "answered": len(answered),
        "in_ledger": len(billed),
        "answered_missing_from_ledger": len(answered - billed),
        "billed_unseen": len(billed - answered),  # answered by the gateway, reply lost with the process
    }


def redis_restart(workdir: Path, redis: RedisServer, seconds: float = 2.0) -> dict[str, Any]:
    gws = [
        Gateway(
            workdir, gateway_config({"redis_url": redis.url, "data_dir": str(workdir / f"r{i}"), "heartbeat_s": 0.2})
        ).start()
        for i in range(2)
    ]

    async def scenario() -> dict[str, Any]:
        urls = [g.url for g in gws]
        load = asyncio.ensure_future(hammer(urls, 8, 3 * seconds))
        await asyncio.sleep(seconds)  # a bench's timeline, not a test's synchronisation
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(redis.start)
        run = await load
        seen = run["statuses"].get(200, 0)
        for _ in range(100):  # replay is the heartbeat's: wait for it, bounded
            fleet = [await usage(u) for u in urls]
            if all(u["requests"] == seen for u in fleet):
                break
            await asyncio.sleep(0.1)
        journalled = [await metric(u, "railgate_state_journalled_rows_total") for u in urls]
        replayed = [await metric(u, "railgate_state_replayed_rows_total") for u in urls]
        return {
            "answered": seen,
            "usage_requests": [u["requests"] for u in fleet],
            "journalled_rows": int(sum(journalled)),
            "replayed_rows": int(sum(replayed)),
            "counted_twice": max(0, max(u["requests"] for u in fleet) - seen),
            "lost": max(0, seen - min(u["requests"] for u in fleet)),
        }

    with running(*gws):
        return asyncio.run(scenario())


def latency(workdir: Path, redis: RedisServer, runs: int, seconds: float) -> dict[str, Any]:
    limit = {"rate_per_s": 1_000_000, "burst": 1_000_000}  # never refused: every call takes a leased token
    memory = Gateway(workdir, gateway_config({}, **limit)).start()
    shared = Gateway(workdir, gateway_config({"redis_url": redis.url}, **limit)).start()
    p50: dict[str, dict[int, list[float]]] = {"memory": {1: [], 16: []}, "redis": {1: [], 16: []}}
    with running(memory, shared):
        for gw in (memory, shared):
            asyncio.run(hammer([gw.url], 16, 1.0))  # warm-up
        for _ in range(runs):  # interleaved, so a busy spell on the machine spreads over both
            for c in (1, 16):
                for name, gw in (("memory", memory), ("redis", shared)):
                    run = asyncio.run(hammer([gw.url], c, seconds))
                    p50[name][c].append(statistics.median(run["latencies"]) * 1000)
    out: dict[str, Any] = {"runs": runs, "seconds": seconds}
    for c in (1, 16):
        mem, red = p50["memory"][c], p50["redis"][c]
        added = [r - m for r, m in zip(red, mem, strict=True)]
        out[f"c{c}"] = {
            "p50_memory_ms": round(statistics.median(mem), 3),
            "p50_redis_ms": round(statistics.median(red), 3),
            "added_p50_ms": round(statistics.median(added), 3),
            "added_p50_ms_each_run": [round(a, 3) for a in added],
        }
    return out


def paired_c1(workdir: Path, redis: RedisServer, calls: int) -> dict[str, Any]:
    """c=1, one call to each gateway in turn (memory, Redis): the median of the pairs' differences, which a
    busy spell on the machine shifts for both alike."""
    import http.client

    limit = {"rate_per_s": 1_000_000, "burst": 1_000_000}
    memory = Gateway(workdir, gateway_config({}, **limit)).start()
    shared = Gateway(workdir, gateway_config({"redis_url": redis.url}, **limit)).start()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    lat: dict[str, list[float]] = {"memory": [], "redis": []}
    with running(memory, shared):
        conns = {"memory": http.client.HTTPConnection("127.0.0.1", memory.port, timeout=10),
                 "redis": http.client.HTTPConnection("127.0.0.1", shared.port, timeout=10)}  # fmt: skip
        try:
            for _ in range(calls + 100):  # the first 100 pairs warm up
                for name, conn in conns.items():
                    t0 = time.perf_counter()
                    conn.request("POST", "/v2/models/digits/infer", BODY, headers)
                    reply = conn.getresponse()
                    reply.read()
                    if reply.status != 200:
                        raise RuntimeError(f"{name} gateway answered {reply.status}")
                    lat[name].append(time.perf_counter() - t0)
        finally:
            for conn in conns.values():
                conn.close()
    mem, red = lat["memory"][100:], lat["redis"][100:]
    return {
        "pairs": len(mem),
        "p50_memory_ms": round(statistics.median(mem) * 1000, 3),
        "p50_redis_ms": round(statistics.median(red) * 1000, 3),
        "added_p50_ms": round(statistics.median([r - m for r, m in zip(red, mem, strict=True)]) * 1000, 3),
    }


def state_latency(redis: RedisServer, workdir: Path, runs: int, calls: int) -> dict[str, Any]:
    """p50 of admit + bill of one call, in process on uvloop: memory, Redis, SQLite (median over runs)."""
    import uvloop

    from gateway.config import State, TenantSpec
    from gateway.metrics import Metrics
    from gateway.state.fleet import FleetState
    from gateway.state.ledger import SqliteLedger
    from gateway.state.local import LocalState
    from gateway.tenants import Tenants

    specs = (TenantSpec("acme", keys=(hash_key(KEY),), rate_per_s=1e6, burst=1e6),)

    async def one(state: Any, tenant: Any) -> float:
        t0 = time.perf_counter()
        leasing = state.admit(tenant, "digits", 1)
        if leasing is not None:
            await leasing
        await state.bill(tenant, "digits", "local", 1, 0.02, "id")
        return time.perf_counter() - t0

    async def p50(state: Any, c: int) -> float:
        await state.start()
        try:
            tenant = state.tenants.tenants["acme"]
            for _ in range(100):
                await one(state, tenant)
            lat: list[float] = []
            for _ in range(calls // c):
                lat += await asyncio.gather(*(one(state, tenant) for _ in range(c)))
            return statistics.median(lat) * 1000
        finally:
            await state.close()

    results: dict[str, dict[int, list[float]]] = {k: {1: [], 16: []} for k in ("memory", "redis", "sqlite")}
    for run in range(runs):
        for c in (1, 16):
            made = {
                "memory": LocalState(Tenants(specs), None),
                "redis": FleetState(Tenants(specs), State(redis_url=redis.url), Metrics(), None),
                "sqlite": LocalState(Tenants(specs), SqliteLedger(workdir / f"lat-{run}-{c}.sqlite3")),
            }
            for name, state in made.items():
                results[name][c].append(uvloop.run(p50(state, c)))
    return {
        f"c{c}": {
            name: round(statistics.median(results[name][c]), 4) for name in results
        } | {"added_redis_ms": round(statistics.median(
            [r - m for r, m in zip(results["redis"][c], results["memory"][c], strict=True)]), 4)}
        for c in (1, 16)
    }  # fmt: skip


def measure(workdir: Path, runs: int = 3, quick: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    binary = redis_binary()
    if binary is None:
        missing = "redis-server (apt-get install -y redis-server; make sysdeps does this as root)"
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{missing} is missing under CI")
        return {"missing": missing}
    figures: dict[str, Any] = {}
    with running(redis := RedisServer(binary, workdir / "redis-limit").start()):
        say("state: shared limit, 2 gateways, 12 clients")
        figures["shared_limit"] = shared_limit(workdir, redis, 2.0 if quick else 6.0)
    say("state: SIGKILL under load")
    figures["sigkill"] = sigkill(workdir, 1.0 if quick else 3.0)
    with running(redis := RedisServer(binary, workdir / "redis-restart").start()):
        say("state: Redis restarted mid-load")
        figures["redis_restart"] = redis_restart(workdir, redis, 1.0 if quick else 2.0)
    with running(redis := RedisServer(binary, workdir / "redis-latency").start()):
        say("state: latency, memory vs Redis, c=1 and c=16")
        figures["latency"] = latency(workdir, redis, runs, 1.0 if quick else 5.0)
        say("state: latency, paired calls at c=1")
        figures["paired_c1"] = paired_c1(workdir, redis, 300 if quick else 2000)
        say("state: the state's own p50 in process, c=1 and c=16")
        figures["state_latency"] = state_latency(redis, workdir, max(runs, 3), 300 if quick else 3000)
    return figures


def rows(figures: dict[str, Any]) -> list[str]:
    """The section's lines for a report."""
    if "missing" in figures:
        return [f"MISSING {figures['missing']}: state rows not measured"]
    s, k, r, lat = figures["shared_limit"], figures["sigkill"], figures["redis_restart"], figures["latency"]
    st = figures["state_latency"]
    return [
        f"shared limit (2 gateways, 1 Redis, 100 req/s burst 100, {s['clients']} clients, {s['seconds']} s): "
        f"admitted {s['admitted']} of ~{s['allowed']} allowed ({s['refused_429']} refused 429); "
        f"/v1/usage requests {s['usage_requests']} (equal to answered: {s['usage_equals_answered']})",
        f"SIGKILL under load (SQLite ledger): {k['answered']} answered, {k['in_ledger']} in the ledger, "
        f"{k['answered_missing_from_ledger']} answered and missing, {k['billed_unseen']} billed but unseen",
        f"Redis restarted mid-load: {r['answered']} answered, /v1/usage {r['usage_requests']}, "
        f"{r['journalled_rows']} rows journalled, {r['replayed_rows']} replayed, "
        f"{r['counted_twice']} counted twice, {r['lost']} lost",
        *(
            f"latency c={c}: p50 {lat[f'c{c}']['p50_memory_ms']} ms in memory, {lat[f'c{c}']['p50_redis_ms']} ms "
            f"with Redis: added {lat[f'c{c}']['added_p50_ms']} ms (median of {lat['runs']} runs; each: "
            f"{lat[f'c{c}']['added_p50_ms_each_run']})"
            for c in (1, 16)
        ),
        f"latency c=1, paired (one call to each gateway in turn, {figures['paired_c1']['pairs']} pairs): p50 "
        f"{figures['paired_c1']['p50_memory_ms']} ms in memory, {figures['paired_c1']['p50_redis_ms']} ms with "
        f"Redis: added {figures['paired_c1']['added_p50_ms']} ms (median of the pairs' differences)",
        *(
            f"state p50 in process c={c}: memory {st[f'c{c}']['memory']} ms, Redis {st[f'c{c}']['redis']} ms, "
            f"SQLite {st[f'c{c}']['sqlite']} ms: Redis adds {st[f'c{c}']['added_redis_ms']} ms (target <= 0.1 ms)"
            for c in (1, 16)
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        figures = measure(Path(tmp), args.runs, args.quick, say=lambda m: print(m, file=sys.stderr))
    for line in rows(figures):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
