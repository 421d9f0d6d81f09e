"""From raw run figures to the report: targets met or missed, markdown tables, bench.json, latency.png.

Everything but ``write_report`` and ``plot`` is pure: sections (dicts of per-run figures, as the
scenarios return them) in, values or text out, so it can be checked on synthetic numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plot import plot
from bench.stats import Spread, spread

# Issue 14's targets: what the gateway may add, and cost, per request and per batch (both fronts).
OVERHEAD_P50_MS = 0.4  # the gateway may add this much to direct p50 at c=1 ...
OVERHEAD_P99_MS = 1.0  # ... and this much to direct p99
C1_CPU_US = 300.0  # gateway CPU per request at c=1 (every request its own batch: the per-batch cost)
COST_CPU_US = {"binary": 80.0, "msgpack": 80.0, "json": 120.0}  # per request at c=64
ECHO_RATIO = 0.5  # railgate's requests per CPU-second over a bare aiohttp + uvloop echo server's
# (the gRPC front's: over a bare grpc.aio echo's, the gRPC section's path of this name)
GRPC_FLOOR = "grpc floor"
GRPC_FORWARD_FLOOR = "grpc forward floor"  # bench/grpc_echo.py --hub: unary calls only, no stream row
BATCHING_GAIN = 1.5  # gateway throughput over direct, behind the link, at equal or better p99 (wave 1 asked 3x)
SYSTEM_CPU_RATIO = 0.5  # behind the link: (gateway + hub) CPU per inference over direct's hub CPU per inference
SECTION_TITLES = {
    "overhead": "1. Overhead",
    "batching": "2. Batching gain",
    "cost": "3. Cost",
    "grpc": "4. gRPC front",
    "tracing": "5. Tracing overhead",
    "state": "6. Fleet state and the usage ledger",
    "tls": "7. TLS",
}


@dataclass(frozen=True, slots=True)
class Target:
    section: str
    goal: str
    figure: str
    met: bool | None  # None: not measured (a path failed or was skipped)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


def runs_of(case: dict[str, Any], key: str) -> list[float | None]:
    return [r.get(key) for r in case.get("runs", [])]


def case_spread(case: dict[str, Any] | None, key: str) -> Spread | None:
    return spread(runs_of(case, key)) if case else None


def find_case(section: dict[str, Any], **match: Any) -> dict[str, Any] | None:
    for case in section.get("cases", []):
        if all(case.get(k) == v for k, v in match.items()):
            return case
    return None


def paired(
    a: dict[str, Any] | None,
    b: dict[str, Any] | None,
    key: str,
    combine: Callable[[float, float], float] = operator.sub,
) -> Spread | None:
    """Spread of ``combine(a, b)`` over runs with the same index (the paths' runs are interleaved in time)."""
    if not a or not b:
        return None
    values = []
    for x, y in zip(runs_of(a, key), runs_of(b, key), strict=False):
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            with contextlib.suppress(ZeroDivisionError):
                values.append(combine(x, y))
    return spread(values)


def fmt(s: Spread | None, digits: int = 2, sign: bool = False, suffix: str = "") -> str:
    """``median [min, max]``; one number for a single run; an em dash for nothing measured."""
    if s is None:
        return "—"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = f.format(s.median) + suffix
    if s.runs > 1 and s.min != s.max:
        text += f" [{f.format(s.min)}, {f.format(s.max)}]"
    return text


def overhead_targets(
    section: dict[str, Any], concurrencies: tuple[int, ...] = (), name: str = "overhead"
) -> list[Target]:
    """Gateway added latency per concurrency (those measured, else ``concurrencies``, as not measured),
    and its CPU per request at c=1."""
    targets = []
    measured = {case["concurrency"] for case in section.get("cases", []) if not case.get("stream")}
    for c in sorted(measured or set(concurrencies)):
        direct, gateway = (
            find_case(section, path="direct", concurrency=c),
            find_case(section, path="gateway", concurrency=c),
        )
        for key, limit in (("p50_ms", OVERHEAD_P50_MS), ("p99_ms", OVERHEAD_P99_MS)):
            added = paired(gateway, direct, key)
            goal = f"gateway {key[:3]} adds ≤ {limit:g} ms vs direct, c={c}"
            met = None if added is None else added.median <= limit
            targets.append(Target(name, goal, fmt(added, sign=True, suffix=" ms"), met))
        if c == 1:
            targets.append(_cpu_target(name, gateway, C1_CPU_US, "c=1"))
    stream = find_case(section, path="gateway", stream=True)
    if stream is not None:
        targets.append(_cpu_target(name, stream, COST_CPU_US["binary"], f"stream, {stream['concurrency']} in flight"))
    return targets


def _cpu_target(name: str, case: dict[str, Any] | None, limit: float, where: str) -> Target:
    cpu = _cpu_per_request(case, "gateway") if case else None
    goal = f"gateway CPU ≤ {limit:g} µs per request, {where}"
    return Target(name, goal, fmt(cpu, 0, suffix=" µs"), None if cpu is None else cpu.median <= limit)


def cost_targets(section: dict[str, Any]) -> list[Target]:
    """Per encoding at saturation: the gateway's CPU per request, and its requests per CPU-second
    against the bare echo server's (paired run by run)."""
    targets = []
    echo = next((c for c in section.get("cases", []) if c.get("server") == "bare aiohttp+uvloop echo"), None)
    for case in section.get("cases", []):
        if case.get("server") is not None:
            continue
        encoding, c = case["encoding"], case["concurrency"]
        limit = COST_CPU_US.get(encoding)
        if limit is not None:
            targets.append(_cpu_target("cost", case, limit, f"{encoding}, c={c}"))
        ratio = paired(case, echo, "requests_per_gateway_cpu_s", lambda g, e: g / e)
        goal = f"req per gateway CPU-s ≥ {ECHO_RATIO:g}x the bare echo server's, {encoding}, c={c}"
        targets.append(
            Target("cost", goal, fmt(ratio, suffix="x"), None if ratio is None else ratio.median >= ECHO_RATIO)
        )
    return targets


def grpc_floor_targets(section: dict[str, Any]) -> list[Target]:
    """The gRPC front's requests per CPU-second over the bare grpc.aio echo's at saturation (the stream
    row), paired run by run: the gRPC front's counterpart of the cost section's echo ratio."""
    gateway = find_case(section, path="gateway", stream=True)
    if gateway is None:
        return []
    floor = find_case(section, path=GRPC_FLOOR, stream=True)

    def per_request(case: dict[str, Any] | None, name: str) -> list[float | None]:
        if case is None:
            return []
        return [
            r["cpu_s"][name] / r["ok"] if (r.get("cpu_s") or {}).get(name) and r.get("ok") else None
            for r in case["runs"]
        ]

    pairs = zip(per_request(gateway, "gateway"), per_request(floor, GRPC_FLOOR), strict=False)
    ratio = spread([f / g for g, f in pairs if g is not None and f is not None])
    goal = (
        f"req per gateway CPU-s ≥ {ECHO_RATIO:g}x the bare grpc.aio echo server's, "
        f"stream, {gateway['concurrency']} in flight"
    )
    return [Target("grpc", goal, fmt(ratio, suffix="x"), None if ratio is None else ratio.median >= ECHO_RATIO)]


def batching_targets(section: dict[str, Any], name: str = "batching") -> list[Target]:
    direct, gateway = find_case(section, path="direct"), find_case(section, path="gateway")
    gain = paired(gateway, direct, "throughput_rps", lambda g, d: g / d)
    p99_gateway, p99_direct = case_spread(gateway, "p99_ms"), case_spread(direct, "p99_ms")
    goal = f"gateway req/s ≥ {BATCHING_GAIN:g}x direct at equal or better p99"
    if gain is None or p99_gateway is None or p99_direct is None:
        return [Target(name, goal, "—", None), system_cpu_target(section, name)]
    figure = f"{fmt(gain, suffix='x')}; p99 {p99_gateway.median:.1f} vs {p99_direct.median:.1f} ms"
    met = gain.median >= BATCHING_GAIN and p99_gateway.median <= p99_direct.median
    return [Target(name, goal, figure, met), system_cpu_target(section, name)]


def system_cpu_target(section: dict[str, Any], name: str = "batching") -> Target:
    direct, gateway = find_case(section, path="direct"), find_case(section, path="gateway")
    ratio = paired(gateway, direct, "system_cpu_us_per_inference", lambda g, d: g / d)
    goal = f"gateway + hub CPU per inference ≤ {SYSTEM_CPU_RATIO:g}x direct's hub CPU per inference"
    figure = fmt(ratio, suffix="x")
    if ratio is not None:
        g, d = case_spread(gateway, "system_cpu_us_per_inference"), case_spread(direct, "system_cpu_us_per_inference")
        if g is not None and d is not None:
            figure += f" ({g.median:.0f} vs {d.median:.0f} µs)"
    return Target(name, goal, figure, None if ratio is None else ratio.median <= SYSTEM_CPU_RATIO)


def all_targets(report: dict[str, Any]) -> list[Target]:
    targets = []
    if "overhead" in report.get("sections", {}):
        plan = report.get("plan", {})
        planned = (1, plan["overhead_concurrency"]) if "overhead_concurrency" in plan else ()
        targets += overhead_targets(report["sections"]["overhead"], planned)
    if "batching" in report.get("sections", {}):
        targets += batching_targets(report["sections"]["batching"])
    if "cost" in report.get("sections", {}):
        targets += cost_targets(report["sections"]["cost"])
    if "grpc" in report.get("sections", {}):
        grpc = report["sections"]["grpc"]
        front = {**grpc, "cases": [c for c in grpc.get("cases", []) if not c.get("link")]}
        targets += overhead_targets(front, name="grpc")
        targets += grpc_floor_targets(front)
        link = {**grpc, "cases": [c for c in grpc.get("cases", []) if c.get("link")]}
        if link["cases"]:
            targets += batching_targets(link, name="grpc")
    return targets


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _cpu(case: dict[str, Any] | None, name: str) -> Spread | None:
    return spread([(r.get("cpu_s") or {}).get(name) for r in case["runs"]]) if case else None


def _per(run: dict[str, Any], name: str, seconds: float | None) -> float | None:
    """CPU-seconds of ``name`` per second of the window: how many cores it kept busy."""
    used = (run.get("cpu_s") or {}).get(name)
    return used / seconds if used is not None and seconds else None


def _cpu_per_request(case: dict[str, Any], name: str) -> Spread | None:
    """Microseconds of ``name``'s CPU per answered request (the proxy's own cost; none for direct)."""
    return spread(
        [
            r["cpu_s"][name] / r["ok"] * 1e6 if (r.get("cpu_s") or {}).get(name) is not None and r.get("ok") else None
            for r in case["runs"]
        ]
    )


def other_cores(run: dict[str, Any]) -> float | None:
    """Cores kept busy by processes this benchmark did not start (machine busy minus ours) in a run's window."""
    busy, window = run.get("machine_busy_cores"), run.get("cpu_window_s")
    if busy is None or not window or run.get("ok") == 0:
        # A run that answered nothing (a stream the hub broke at once) has a window of microseconds, whose
        # busy cores are noise (238 of 2 was seen): it says nothing about the machine's load.
        return None
    ours = sum(v for v in (run.get("cpu_s") or {}).values() if v is not None)
    return max(0.0, busy - ours / window)


def other_load_note(section: dict[str, Any]) -> str | None:
    s = spread([other_cores(r) for case in section.get("cases", []) for r in case["runs"]])
    if s is None:
        return None
    warning = " The machine was shared: treat these figures with care." if s.median > 0.25 else ""
    return (
        f"Other processes on the machine (not started by this benchmark) kept {fmt(s)} cores busy during "
        f"the measured windows.{warning}"
    )


def _errors(case: dict[str, Any]) -> str:
    total = sum(r.get("errors") or 0 for r in case["runs"])
    kinds: dict[str, int] = {}
    for r in case["runs"]:
        for kind, n in (r.get("error_kinds") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    return "0" if not total else f"{total} ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})"


def overhead_markdown(section: dict[str, Any]) -> list[str]:
    verdicts = {t.goal: t for t in overhead_targets(section)}
    rows = []
    for case in section.get("cases", []):
        c, path = case["concurrency"], case["path"]
        direct = find_case(section, path="direct", concurrency=c)
        is_direct = path == "direct"
        d50 = None if is_direct else paired(case, direct, "p50_ms")
        d99 = None if is_direct else paired(case, direct, "p99_ms")
        target, met = "—", "—"
        if path == "gateway":
            t50 = verdicts.get(f"gateway p50 adds ≤ {OVERHEAD_P50_MS:g} ms vs direct, c={c}")
            t99 = verdicts.get(f"gateway p99 adds ≤ {OVERHEAD_P99_MS:g} ms vs direct, c={c}")
            target = f"p50 +≤{OVERHEAD_P50_MS:g} ms, p99 +≤{OVERHEAD_P99_MS:g} ms"
            met = f"p50 {t50.verdict if t50 else '—'}, p99 {t99.verdict if t99 else '—'}"
            if case.get("stream"):
                t_cpu = next((t for t in verdicts.values() if t.goal.endswith("in flight")), None)
                target, met = f"CPU ≤ {COST_CPU_US['binary']:g} µs/req", t_cpu.verdict if t_cpu else "—"
            elif c == 1:
                t_cpu = verdicts.get(f"gateway CPU ≤ {C1_CPU_US:g} µs per request, c=1")
                target += f", CPU ≤ {C1_CPU_US:g} µs/req"
                met += f", CPU {t_cpu.verdict if t_cpu else '—'}"
        rows.append(
            [
                str(c),
                path,
                case.get("client", ""),
                fmt(case_spread(case, "p50_ms")),
                fmt(case_spread(case, "p99_ms")),
                fmt(case_spread(case, "throughput_rps"), 0),
                fmt(d50, sign=True),
                fmt(d99, sign=True),
                fmt(_cpu_per_request(case, path), 0),
                fmt(case_spread(case, "mean_batch_rows"), 1),
                target,
                met,
                _errors(case),
            ]
        )
    header = ["c", "path", "client", "p50 ms", "p99 ms", "req/s", "p50 added ms", "p99 added ms"]
    return _table([*header, "proxy CPU µs/req", "mean batch", "target", "met?", "errors"], rows)


def batching_markdown(section: dict[str, Any]) -> list[str]:
    direct = find_case(section, path="direct")
    verdict, cpu_verdict = batching_targets(section)
    rows = []
    for case in section.get("cases", []):
        is_gateway = case["path"] == "gateway"
        gain = paired(case, direct, "throughput_rps", lambda g, d: g / d)
        cpu_ratio = paired(case, direct, "system_cpu_us_per_inference", lambda g, d: g / d)
        rows.append(
            [
                case["path"],
                str(case["concurrency"]),
                fmt(case_spread(case, "throughput_rps"), 0),
                fmt(case_spread(case, "p50_ms"), 1),
                fmt(case_spread(case, "p99_ms"), 1),
                fmt(gain, suffix="x"),
                fmt(case_spread(case, "mean_batch_rows"), 1),
                fmt(case_spread(case, "system_cpu_us_per_inference"), 0),
                "—" if case["path"] == "direct" else fmt(cpu_ratio, suffix="x"),
                f"≥ {BATCHING_GAIN:g}x direct, p99 ≤ direct; CPU ≤ {SYSTEM_CPU_RATIO:g}x" if is_gateway else "—",
                f"{verdict.verdict}; CPU {cpu_verdict.verdict}" if is_gateway else "—",
                fmt(_cpu(case, "gateway"), 2),
                fmt(_cpu(case, "link"), 2),
                fmt(_cpu(case, "hub"), 2),
                _errors(case),
            ]
        )
    header = ["path", "clients", "req/s", "p50 ms", "p99 ms", "req/s vs direct", "mean batch"]
    header += ["hub + proxy CPU µs/inference", "vs direct", "target", "met?"]
    return _table([*header, "gateway CPU-s", "link CPU-s", "hub CPU-s", "errors"], rows)


def cost_markdown(section: dict[str, Any]) -> list[str]:
    verdicts = {t.goal: t for t in cost_targets(section)}
    echo = next((c for c in section.get("cases", []) if c.get("server") == "bare aiohttp+uvloop echo"), None)
    rows = []
    for case in section.get("cases", []):
        server, encoding, c = case.get("server", "railgate"), case["encoding"], case["concurrency"]
        cpu = _cpu(case, "gateway")
        cores = spread([_per(r, "gateway", r.get("cpu_window_s")) for r in case["runs"]])
        target, met = "—", "—"
        if server == "railgate":
            limit = COST_CPU_US.get(encoding)
            t_cpu = verdicts.get(f"gateway CPU ≤ {limit:g} µs per request, {encoding}, c={c}")
            t_echo = verdicts.get(f"req per gateway CPU-s ≥ {ECHO_RATIO:g}x the bare echo server's, {encoding}, c={c}")
            target = f"≤ {limit:g} µs/req; ≥ {ECHO_RATIO:g}x echo"
            met = f"{t_cpu.verdict if t_cpu else '—'}; {t_echo.verdict if t_echo else '—'}"
        ratio = None if case is echo else paired(case, echo, "requests_per_gateway_cpu_s", lambda g, e: g / e)
        rows.append(
            [
                server,
                encoding,
                str(c),
                fmt(case_spread(case, "throughput_rps"), 0),
                fmt(case_spread(case, "p50_ms")),
                fmt(case_spread(case, "p99_ms")),
                fmt(cpu),
                fmt(cores),
                fmt(_cpu_per_request(case, "gateway"), 0),
                fmt(case_spread(case, "requests_per_gateway_cpu_s"), 0),
                fmt(ratio, suffix="x"),
                fmt(case_spread(case, "mean_batch_rows"), 1),
                target,
                met,
                fmt(_cpu(case, "hub")),
                fmt(_cpu(case, "loadgen")),
                fmt(case_spread(case, "machine_busy_cores")),
                _errors(case),
            ]
        )
    header = ["server", "encoding", "c", "req/s", "p50 ms", "p99 ms", "server CPU-s", "server cores"]
    header += ["server CPU µs/req", "req / server CPU-s", "vs echo", "mean batch", "target", "met?"]
    return _table([*header, "hub CPU-s", "load-gen CPU-s", "machine busy cores", "errors"], rows)


def grpc_markdown(section: dict[str, Any]) -> list[str]:
    """The gRPC front's rows: the overhead table's shape (paths x concurrencies, the stream at its
    window), then the clients behind the backbone link in the batching table's."""
    front = {**section, "cases": [c for c in section.get("cases", []) if not c.get("link")]}
    link = {**section, "cases": [c for c in section.get("cases", []) if c.get("link")]}
    lines = overhead_markdown(front)
    if link["cases"]:
        lines += ["", *batching_markdown(link)]
    return lines


def tracing_markdown(section: dict[str, Any]) -> list[str]:
    """Per tracing setting and concurrency: p50, gateway CPU per request, and what each adds over tracing off."""
    rows, hooks = [], []
    for case in section.get("cases", []):
        if case["concurrency"] == "hooks":
            hooks.append(f"{case['tracing']}: {fmt(case_spread(case, 'hooks_cpu_us'), 1)} µs")
            continue
        off = find_case(section, tracing="off", concurrency=case["concurrency"])
        traced = case["tracing"] != "off"
        cpu = _cpu_per_request(case, "gateway")

        def per_request(run: dict[str, Any]) -> float | None:
            used = (run.get("cpu_s") or {}).get("gateway")
            return used / run["ok"] * 1e6 if used is not None and run.get("ok") else None

        added_cpu = None
        if traced and off:
            pairs = zip((per_request(r) for r in case["runs"]), (per_request(r) for r in off["runs"]), strict=False)
            added_cpu = spread([a - b for a, b in pairs if a is not None and b is not None])
        rows.append(
            [
                case["tracing"],
                str(case["concurrency"]),
                fmt(case_spread(case, "throughput_rps"), 0),
                fmt(case_spread(case, "p50_ms"), 3),
                fmt(paired(case, off, "p50_ms"), 3, sign=True) if traced else "—",
                fmt(case_spread(case, "p99_ms")),
                fmt(cpu, 0),
                fmt(added_cpu, 0, sign=True) if traced else "—",
                fmt(case_spread(case, "spans_received"), 0),
                _errors(case),
            ]
        )
    header = ["tracing", "c", "req/s", "p50 ms", "added p50 ms", "p99 ms", "gateway CPU µs/req", "added CPU µs/req"]
    lines = _table([*header, "spans received", "errors"], rows)
    if hooks:
        lines += [
            "",
            "CPU of the tracing code alone per request (in a process of its own, all threads, OTLP export "
            f"included; none of it runs with tracing off): {'; '.join(hooks)}.",
        ]
    return lines


BATCH_NOTE = "Mean batch = rows per batch the gateway sent to the hub (from its /metrics, warm-up included)."


def tls_markdown(section: dict[str, Any]) -> list[str]:
    """Per protocol and concurrency: plain and TLS p50/p99/req/s, and what TLS adds (paired run by run)."""
    rows = []
    for case in section.get("cases", []):
        if case.get("path") != "tls":
            continue
        protocol, c = case["protocol"], case["concurrency"]
        plain = find_case(section, protocol=protocol, path="plain", concurrency=c)
        rows.append(
            [
                protocol,
                str(c),
                fmt(case_spread(plain, "p50_ms")),
                fmt(case_spread(case, "p50_ms")),
                fmt(paired(case, plain, "p50_ms"), sign=True),
                fmt(case_spread(plain, "p99_ms")),
                fmt(case_spread(case, "p99_ms")),
                fmt(paired(case, plain, "p99_ms"), sign=True),
                fmt(case_spread(plain, "throughput_rps"), 0),
                fmt(case_spread(case, "throughput_rps"), 0),
                _errors(case),
            ]
        )
    header = ["protocol", "c", "plain p50 ms", "TLS p50 ms", "TLS adds p50 ms", "plain p99 ms", "TLS p99 ms"]
    return _table([*header, "TLS adds p99 ms", "plain req/s", "TLS req/s", "errors"], rows)


SECTION_MARKDOWN = {
    "overhead": overhead_markdown,
    "batching": batching_markdown,
    "cost": cost_markdown,
    "grpc": grpc_markdown,
    "tracing": tracing_markdown,
    "state": lambda section: [f"- {line}" for line in _fleet_rows(section["cases"][0]["figures"])],
    "tls": tls_markdown,
}
SECTION_NOTES = {
    "state": "Local ONNX Runtime backend (the state, not the hub, is measured). python -m bench.fleet runs "
    "the same rows alone. Redis: a real redis-server on loopback, appendonly yes.",
    "overhead": "c=1: {sequential_requests} sequential requests after {sequential_warmup} warm-up, tritonclient.http "
    "sync client. c={overhead_concurrency}: closed loop for {overhead_duration_s:g} s after {overhead_warmup_s:g} s "
    "warm-up (bench.load, own process). Added = gateway (or nginx) minus direct, paired run by run. "
    "Proxy CPU = the gateway's (or nginx's, master and worker) CPU time per answered request. python floor: "
    "bench/forward_floor.py, a bare aiohttp + uvloop server that sends each body unchanged to the hub with the "
    "gateway's own hub client and answers its reply (no decoding, validation, routing, batching or metrics): "
    "the least any Python front that calls a hub per request spends here, as railgate does at c=1.",
    "batching": "{batching_concurrency} closed-loop clients, one item each, {batching_duration_s:g} s after "
    "{batching_warmup_s:g} s warm-up; `railgate link --delay-ms {link_delay_ms:g}` in front of the hub. direct: "
    "clients → link → hub; gateway: clients → gateway → link → hub; nginx: clients → nginx → link → hub. "
    "Hub + proxy CPU per inference: the hub's (and the gateway's or nginx's) CPU per answered request; the "
    "link's is left out (in production it is the network).",
    "grpc": "tritonclient.grpc against the hub's own gRPC port (direct) and the gateway's gRPC front (which "
    "talks to the hub over HTTP with binary tensors). c=1: {sequential_requests} sequential calls after "
    "{sequential_warmup} warm-up, sync client. c={overhead_concurrency}: tritonclient.grpc.aio closed loop for "
    "{overhead_duration_s:g} s after {overhead_warmup_s:g} s warm-up. c=64: one ModelStreamInfer stream keeping "
    "64 requests in flight. Proxy CPU = the gateway's CPU time per answered request. grpc floor: "
    "bench/grpc_echo.py, a bare grpc.aio + uvloop server with Triton's generated service that answers each "
    "call (and each stream message) with a fixed reply the shape of the gateway's (no decoding past protobuf's, "
    "no batching, no hub): what grpc.aio and protobuf alone cost per call here, the least any front built on "
    "them spends; its stream row is the anchor of the gRPC front's echo ratio. grpc forward floor: the same "
    "server sending each unary call's raw inputs to the hub in one binary HTTP infer with the gateway's own hub "
    "client and answering its outputs (no validation, routing, batching or metrics): the least a grpc.aio front "
    "that calls a hub per request spends, as railgate does at c=1 (no stream row). Second table: "
    "{batching_concurrency} tritonclient.grpc.aio clients behind `railgate link --delay-ms {link_delay_ms:g}`, "
    "straight to the hub's gRPC port (direct) or into the gateway's gRPC front (whose hub is behind its own link); "
    "hub + proxy CPU per inference leaves the link out (in production it is the network).",
    "tracing": "Three gateways alike but for `tracing:` (off; sample_ratio 0.01; 1.0, exporting over OTLP/HTTP "
    "to a real receiver on loopback in the bench process, the SDK's 5 s export delay). c=1: "
    "{sequential_requests} sequential requests after {sequential_warmup} warm-up (tritonclient.http sync); "
    "c={overhead_concurrency}: closed loop for {overhead_duration_s:g} s after {overhead_warmup_s:g} s warm-up. "
    "Added = traced minus off, paired run by run (cases interleaved, their order turning each run). "
    "Spans received: exported by the end of the run (a lower bound: the last batch may still be on its way).",
    "cost": "Gateway straight to the hub, {cost_concurrency} closed-loop clients, {cost_duration_s:g} s after "
    "{cost_warmup_s:g} s warm-up. CPU-s from /proc/<pid>/stat (utime+stime) over the measured window; "
    "gateway cores = gateway CPU-s / window. The bare aiohttp+uvloop echo server (bench/echo.py: reads each "
    "POST, answers a fixed body of the gateway's reply size) is the floor for a Python front; vs echo = "
    "railgate's requests per CPU-second over the echo's, paired run by run. `listen.lean_http: false`: the same "
    "gateway with every request on aiohttp's server instead of its own infer reader (the lean path's before). "
    "`railgate --workers 2`: master and "
    "workers' CPU together; on 2 cores shared with the hub and the load generator the workers contend, so its "
    "figures say what a second process costs here, not what it gains on a larger machine.",
    "tls": "Two gateways in front of the hub, the same but for `listen.tls` (a P-256 certificate made for the "
    "run). HTTP: aiohttp, binary tensors, one keep-alive connection per worker (the handshake is paid once per "
    "connection); gRPC: tritonclient.grpc.aio, secure vs insecure channel. c=1 and c={overhead_concurrency} "
    "closed loops; after {overhead_warmup_s:g} s warm-up each, the two paths take turns in 0.25 s slices for "
    "{overhead_duration_s:g} s each (finer than the shared machine's drift). TLS adds = TLS minus plain, paired "
    "run by run, median [min, max] over runs.",
}


def _fleet_rows(figures: dict[str, Any]) -> list[str]:
    from bench.fleet import rows

    return rows(figures)


def markdown(report: dict[str, Any]) -> str:
    plan, machine = report.get("plan", {}), report.get("machine", {})
    kind = (
        "QUICK run (durations and counts cut ~10x): smoke figures, not for decisions"
        if plan.get("quick")
        else "full run"
    )
    lines = [
        "# railgate benchmark",
        "",
        f"{report.get('started', '?')} · {kind} · {plan.get('runs', '?')} run(s) per case, shown as median [min, max]",
        "",
        f"Machine: {machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), Python {machine.get('python', '?')}, "
        f"{machine.get('nginx') or 'no nginx'}. Load generator, gateway, link and hub share these cores. "
        f"Model `{plan.get('model', 'digits')}`, one FP32 {list(plan.get('shape', (1, 64)))} input per request, "
        "real Triton hub on loopback.",
        "",
        f"Idle cores: {machine.get('idle_policy') or 'unknown (no cpuidle in sysfs)'}.",
        "",
    ]
    for note in report.get("notes", []):
        lines.append(f"> {note}")
    if report.get("notes"):
        lines.append("")
    targets = all_targets(report)
    if targets:
        lines += ["## Targets", ""]
        lines += _table(
            ["section", "target", "figure", "met?"], [[t.section, t.goal, t.figure, t.verdict] for t in targets]
        )
        lines.append("")
    for name, section in report.get("sections", {}).items():
        lines += [f"## {SECTION_TITLES[name]}", ""]
        if "error" in section:
            lines += [f"**Failed:** {section['error']}", ""]
        if not section.get("cases"):
            continue
        lines += [SECTION_NOTES[name].format(**plan), ""]
        lines += [f"> {s}" for s in section.get("skipped", [])]
        lines += [*SECTION_MARKDOWN[name](section), ""]
        if name not in ("tracing", "state", "tls"):
            lines += [BATCH_NOTE, ""]
        note = other_load_note(section)
        if note:
            lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def with_summaries(report: dict[str, Any]) -> dict[str, Any]:
    """The report plus, per case, the median/min/max of every numeric figure and the target verdicts."""
    for section in report.get("sections", {}).values():
        for case in section.get("cases", []):
            for run in case["runs"]:
                run["other_cores"] = other_cores(run)
            keys = {
                k for r in case["runs"] for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
            case["summary"] = {k: s.as_dict() for k in sorted(keys) if (s := case_spread(case, k)) is not None}
    report["targets"] = [
        {"section": t.section, "goal": t.goal, "figure": t.figure, "met": t.met} for t in all_targets(report)
    ]
    return report


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: bench.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], out_root: Path, stamp: str) -> Path:
    """Write bench.json, bench.md and latency.png to ``out_root/stamp`` and copy them to ``out_root/latest``."""
    folder = out_root / stamp
    folder.mkdir(parents=True, exist_ok=True)
    report = with_summaries(report)
    problem = plot(report, folder / "latency.png")
    if problem:
        report.setdefault("notes", []).append(problem)
    (folder / "bench.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    (folder / "bench.md").write_text(markdown(report))
    latest = out_root / "latest"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(folder, latest)
    return folder
