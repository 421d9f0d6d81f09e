"""``make chaos``: fault scenarios against real processes, every request counted, printed as a table.

    scenario | sent | answered OK | refused (429/503) | errors (clear, JSON) | lost | read late | p99 ms

"Lost" is a request that got no HTTP answer at all, or an answer the gateway made after its deadline
(its own ``X-Gateway-Ms``; this driver's clock where the reply does not say): it must be 0 in every
row; a row with a memory bound (slow-bodies: the gateway's peak RSS) also fails past it. "Read late"
counts answers the gateway made in time that this driver, sharing the machine's cores, read past
the deadline: its own lateness, no loss.
Each scenario is bounded in time; all traffic stays on loopback.

    python -m bench.chaos [--seconds S] [--only a,b] [--out DIR]

A progress line per scenario goes to stderr while it runs; the report (``chaos.md``, ``chaos.json``)
has ``chaos.png`` beside its table: per row the requests answered, refused, errored and lost, and
the latencies (p50, p99) of the answered ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.plot import stacked_and_bars
from devtools.devstack import DevStack, python_module
from devtools.procs import ROOT, Child
from railcore.progress import Progress

REPOSITORY = ROOT / "models" / "repository"
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}).encode()
BUDGET_MS = 1000
SLACK_S = 0.3  # a loaded 2-core machine schedules late; an answer within this of the deadline is on time


@dataclass(slots=True)
class Tally:
    scenario: str
    sent: int = 0
    ok: int = 0
    refused: int = 0
    errors: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None
    shutdown_at: float | None = None  # when SIGTERM was sent (monotonic), in the drain scenario
    reset_at_close: int = 0
    rss_limit_mb: float | None = None  # the row fails when the gateway's peak RSS passes this
    read_late: int = 0  # answered in time by the gateway's own clock, read past the deadline by this driver

    def failed(self) -> bool:
        over = self.rss_limit_mb is not None and (self.peak_rss_mb or 0.0) > self.rss_limit_mb
        return self.lost > 0 or over

    def row(self) -> dict[str, object]:
        p50, p99 = (
            (float(v) * 1000 for v in np.percentile(self.latencies, [50, 99])) if self.latencies else (None, None)
        )
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "ok": self.ok,
            "refused": self.refused,
            "errors": self.errors,
            "lost": self.lost,
            "read_late": self.read_late,
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
            "peak_rss_mb": self.peak_rss_mb,
            "notes": self.notes[:3],
            "failed": self.failed(),
        }


async def drive(url: str, tally: Tally, concurrency: int, seconds: float, stop: asyncio.Event | None = None) -> None:
    """Closed-loop clients for ``seconds``; each request is classified once."""
    deadline = time.monotonic() + seconds
    headers = {"X-Latency-Budget-Ms": str(BUDGET_MS), "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=BUDGET_MS / 1000 + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                t0 = time.monotonic()
                tally.sent += 1
                try:
                    async with session.post(f"{url}/v2/models/digits/infer", data=BODY, headers=headers) as reply:
                        raw = await reply.read()
                        status = reply.status
                except (aiohttp.ClientConnectorError, ConnectionRefusedError):
                    tally.sent -= 1  # never reached the gateway: not a request, the listener is gone
                    return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # Connected (or sent on a kept-alive connection) and never answered: lost, before
                    # SIGTERM or after it alike; a drain answers (or refuses) what reached it.
                    tally.lost += 1
                    if tally.shutdown_at is not None and t0 >= tally.shutdown_at:
                        tally.reset_at_close += 1
                    tally.notes.append(f"no answer: {exc!r}")
                    continue
                elapsed = time.monotonic() - t0
                late = elapsed > BUDGET_MS / 1000 + SLACK_S
                gateway_s = _gateway_s(reply.headers)
                if late and (gateway_s is None or gateway_s > BUDGET_MS / 1000 + SLACK_S):
                    tally.lost += 1
                    said = f" (the gateway's own time {gateway_s:.2f}s)" if gateway_s is not None else ""
                    tally.notes.append(f"status {status} after {elapsed:.2f}s{said}, past the deadline")
                    continue
                if late:  # the gateway answered in time; this driver, on the same cores, read it late
                    tally.read_late += 1
                if status == 200:
                    tally.ok += 1
                    tally.latencies.append(elapsed)
                elif status in (429, 503) and reply.headers.get("Retry-After"):
                    tally.refused += 1
                elif _clear_error(raw):
                    tally.errors += 1
                else:
                    tally.lost += 1
                    tally.notes.append(f"status {status} without a JSON error: {raw[:80]!r}")

        await asyncio.gather(*(client() for _ in range(concurrency)))


def _gateway_s(headers: Any) -> float | None:
    """The gateway's own time for the call (its ``X-Gateway-Ms``) in seconds, None if it did not say."""
    try:
        return float(headers["X-Gateway-Ms"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None


def _clear_error(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw)["error"], str)
    except (ValueError, KeyError, TypeError):
        return False


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def faulty_hub(stack: DevStack, upstream: int, mode: str, after_calls: int) -> int:
    """``bench.faults`` in front of port ``upstream``, owned by ``stack``; the port it listens on."""
    args = python_module(
        "bench.faults", "--upstream", str(upstream), "--mode", mode, "--port", "0", "--after-calls", str(after_calls)
    )
    child = stack.child(Child(args, f"faulty-{mode}", ready_line=r"faulty hub listening 127\.0\.0\.1:(\d+)"))
    assert child.ready_match is not None
    return int(child.ready_match.group(1))


def scenario_overload(stack: DevStack, seconds: float) -> Tally:
    """5x the admitted capacity for ``seconds``: the rest refused fast, RSS bounded, instant recovery."""
    tally = Tally("overload 5x capacity")
    hub = stack.hub("west-1")
    link = stack.link(hub.config.http_port, 20)
    gateway = stack.gateway(
        {
            "hubs": [{"name": "west-1", "url": link.url}],
            "local": {"enabled": False},
            "admission": {"max_active_requests": 64},
        }
    )
    url = gateway.url
    rss: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                rss.append(_rss_mb(gateway.pid))
                await asyncio.sleep(0.2)  # sampling period

        watcher = asyncio.ensure_future(watch())
        await drive(url, tally, concurrency=320, seconds=seconds)
        stop.set()
        await watcher
        after = Tally("recovery")
        await drive(url, after, concurrency=4, seconds=1.0)
        if after.ok == 0 or after.refused or after.errors or after.lost:
            tally.notes.append(f"did not recover at once: {after.row()}")

    asyncio.run(run())
    tally.peak_rss_mb = round(max(rss), 1) if rss else None
    return tally


def scenario_sigterm(stack: DevStack, seconds: float) -> Tally:
    tally = Tally("SIGTERM under load")
    hub = stack.hub("west-1")
    link = stack.link(hub.config.http_port, 20)
    gateway = stack.gateway({"hubs": [{"name": "west-1", "url": link.url}], "local": {"enabled": False}})
    url = gateway.url

    async def run() -> None:
        load = asyncio.ensure_future(drive(url, tally, concurrency=32, seconds=seconds + 30))
        await asyncio.sleep(seconds / 2)  # steady load first: the scenario's timeline
        process = gateway.child.process
        assert process is not None
        tally.shutdown_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 40)
        if code != 0:
            tally.notes.append(f"exit status {code}")
        await load
        tally.notes.append(f"exit status {code}; {tally.reset_at_close} sent after SIGTERM were never answered (lost)")

    asyncio.run(run())
    return tally


SLOW_CLIENTS = 1000
MAX_BODY_BYTES = 64 * 1024 * 1024  # limits.max_body_bytes (binary) ...
MAX_JSON_BODY_BYTES = 8 * 1024 * 1024  # ... and limits.max_json_body_bytes, the gateway's defaults
SLOW_BODY_TIMEOUT_S = 3.0  # the scenario gateway's limits.body_timeout_s
BURST = 1024 * 1024  # a slow client sends this much at once, then trickles the rest ...
TRICKLE = b"\0" * 4096  # ... this much every 0.25 s: ~16 KB/s, so a maximum body never ends
SLOW_RSS_LIMIT_MB = 500.0


def _slow_head(port: int, json_body: bool) -> bytes:
    size = MAX_JSON_BODY_BYTES if json_body else MAX_BODY_BYTES
    kind = "Content-Type: application/json" if json_body else "Inference-Header-Content-Length: 100"
    return (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{kind}\r\n"
        f"Content-Length: {size}\r\nX-Latency-Budget-Ms: {BUDGET_MS}\r\n\r\n"
    ).encode()


async def _reply_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return status, headers, await reader.readexactly(int(headers.get("Content-Length", "0")))


async def slow_body_client(port: int, tally: Tally, json_body: bool, until: float) -> None:
    """One slow client, closed loop until ``until``: it declares a maximum body and trickles it. Every
    request must be answered (408 for a body that does not arrive in time, 503 when the gateway is reading
    all it may at once) within the body timeout; a reset or silence is lost."""
    head = _slow_head(port, json_body)
    answer_within = SLOW_BODY_TIMEOUT_S + 5.0
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:  # never connected: not a request
            await asyncio.sleep(0.2)
            continue
        tally.sent += 1
        t0 = time.monotonic()
        reply = asyncio.ensure_future(_reply_of(reader))
        try:
            writer.write(head + bytes(BURST))
            while not reply.done() and time.monotonic() - t0 < answer_within:
                with contextlib.suppress(ConnectionError):  # a refused body: the reply is what counts
                    writer.write(TRICKLE)
                    await writer.drain()
                await asyncio.wait({reply}, timeout=0.25)
            status, headers, raw = await asyncio.wait_for(reply, timeout=0.01)
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            reply.cancel()
            tally.lost += 1
            tally.notes.append(f"slow body not answered: {exc!r}")
            continue
        finally:
            writer.close()
        if status in (429, 503) and headers.get("Retry-After"):
            tally.refused += 1
            await asyncio.sleep(float(headers["Retry-After"]))
        elif status in (408, 413) and _clear_error(raw):
            tally.errors += 1
        else:
            tally.lost += 1
            tally.notes.append(f"slow body answered {status}: {raw[:80]!r}")


def scenario_slow_bodies(stack: DevStack, seconds: float) -> Tally:
    """1,000 slow clients, each declaring a maximum body (half binary at max_body_bytes, half JSON at
    max_json_body_bytes) and trickling it: every one answered, the gateway's memory bounded."""
    tally = Tally(f"{SLOW_CLIENTS} slow clients, maximum bodies", rss_limit_mb=SLOW_RSS_LIMIT_MB)
    gateway = stack.gateway({"local": {"enabled": True}, "limits": {"body_timeout_s": SLOW_BODY_TIMEOUT_S}})

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(slow_body_client(gateway.port, tally, i % 2 == 1, until) for i in range(SLOW_CLIENTS)))
        after = Tally("recovery")
        await drive(gateway.url, after, concurrency=4, seconds=1.0)
        if after.ok == 0 or after.lost:
            tally.notes.append(f"did not recover at once: {after.row()}")

    asyncio.run(run())
    tally.peak_rss_mb = round(_peak_rss_mb(gateway.pid), 1)
    if tally.failed() and not tally.lost:
        tally.notes.append(f"peak RSS {tally.peak_rss_mb} MB is over the bound of {SLOW_RSS_LIMIT_MB:.0f} MB")
    return tally


def _faulty_scenario(mode: str, what: str, hedge: bool = False) -> Callable[[DevStack, float], Tally]:
    def scenario(stack: DevStack, seconds: float) -> Tally:
        tally = Tally(what)
        bad, good = stack.hub("bad-real"), stack.hub("good")
        # Warm-up (one batch per batch size per model) and a few hundred real batches go through
        # first: the hub fails mid-run, after the gateway has learnt to trust and prefer it.
        faulty_port = faulty_hub(stack, bad.config.http_port, mode, after_calls=300)
        config = {
            "hubs": [
                {"name": "bad", "url": f"http://127.0.0.1:{faulty_port}", "price_per_1k": 0.001},
                {"name": "good", "url": f"http://127.0.0.1:{good.config.http_port}", "price_per_1k": 0.01},
            ],
            "local": {"enabled": False},
            "routing": {"default_policy": "cheapest", "hedge": hedge},
        }
        url = stack.gateway(config).url
        asyncio.run(drive(url, tally, concurrency=16, seconds=seconds))
        return tally

    return scenario


SCENARIOS: dict[str, Callable[[DevStack, float], Tally]] = {
    "overload": scenario_overload,
    "sigterm": scenario_sigterm,
    "slow-bodies": scenario_slow_bodies,
    "blackhole": _faulty_scenario("blackhole", "hub accepts, never answers"),
    "blackhole-hedged": _faulty_scenario("blackhole", "hub never answers, hedging on", hedge=True),
    "http500": _faulty_scenario("http500", "hub answers 500s"),
    "garbage": _faulty_scenario("garbage", "hub answers garbage"),
    "cut": _faulty_scenario("cut", "hub closes mid-response"),
}


def run_scenarios(names: list[str], seconds: float, progress: Progress | None = None) -> list[dict[str, object]]:
    """Each scenario on a stack of its own; a progress step per scenario with its counts (to stderr)."""
    progress = progress or Progress("chaos", len(names))
    rows = []
    for name in names:
        progress.phase(f"{name}: starting its processes, then {seconds:g} s of load")
        with DevStack(REPOSITORY) as stack:
            rows.append(SCENARIOS[name](stack, seconds).row())
        r = rows[-1]
        progress.step(
            f"{name}: sent {r['sent']} ok {r['ok']} refused {r['refused']} errors {r['errors']} lost {r['lost']}"
        )
    progress.done()
    return rows


def plot(rows: list[dict[str, object]], path: Path) -> bool:
    """chaos.png: per scenario what became of the requests (stacked), and the answered ones' p50 and p99."""
    labels = [str(r["scenario"]) for r in rows]
    counts = lambda key: [float(r[key]) for r in rows]  # type: ignore[arg-type]  # noqa: E731
    return stacked_and_bars(
        path,
        "Chaos scenarios: every request counted",
        labels,
        [
            ("answered OK", "tab:green", counts("ok")),
            ("refused (429/503)", "tab:orange", counts("refused")),
            ("errors (clear, JSON)", "tab:purple", counts("errors")),
            ("lost", "tab:red", counts("lost")),
        ],
        "requests",
        [("p50", [r.get("p50_ms") for r in rows]), ("p99", [r["p99_ms"] for r in rows])],  # type: ignore[misc]
        "latency of the answered (ms)",
        notes=[f"lost {r['lost']}" for r in rows],
    )


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| scenario | sent | answered OK | refused | errors | lost | read late (driver) | p99 ms | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['sent']} | {r['ok']} | {r['refused']} | {r['errors']} | {r['lost']} | "
            f"{r.get('read_late', 0)} | {r['p99_ms'] if r['p99_ms'] is not None else '-'} | {r['peak_rss_mb'] or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="load per scenario")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path("reports/chaos"))
    args = parser.parse_args(argv)
    rows = run_scenarios(args.only.split(","), args.seconds)
    text = table(rows)
    print(text)
    for r in rows:
        for note in r["notes"]:  # type: ignore[attr-defined]
            print(f"  {r['scenario']}: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(rows, indent=2))
    picture = "![requests and latency per scenario](chaos.png)" if plot(rows, args.out / "chaos.png") else ""
    (args.out / "chaos.md").write_text(f"# Chaos ({args.seconds:.0f} s per scenario)\n\n{text}\n\n{picture}\n")
    print(f"report: {args.out / 'chaos.md'}", file=sys.stderr)
    return 0 if not any(r["failed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
