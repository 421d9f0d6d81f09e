"""The measurements: gateway overhead, batching gain behind a backbone link, CPU cost per encoding, gRPC, TLS.

Each takes the running hub and a ``Plan`` (counts and durations), starts what else it needs
(gateway, link, nginx) for its own duration, repeats every case ``plan.runs`` times with the paths
interleaved (so drift on a shared machine spreads over all of them), and fills the JSON-ready
section dict it is handed, run by run (an interrupted benchmark keeps what it measured).
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.load import ENCODINGS, LoadSpec, Watch
from bench.sequential import sequential_tritonclient
from devtools import procs
from devtools.devstack import Gateway, Hub, Link, Nginx, StartError

# Printed and reported where nginx is absent: a missing anchor is never a silent skip (bench.run fails under CI).
MISSING_ROW = "MISSING nginx (install nginx-light): nginx row not measured"

# The servers of the cost section: railgate, the bare echo anchor, railgate with two worker processes.
SERVER_RAILGATE, SERVER_ECHO, SERVER_WORKERS = "railgate", "bare aiohttp+uvloop echo", "railgate --workers 2"
SERVER_AIOHTTP = "railgate, aiohttp's HTTP path (listen.lean_http: false)"  # the lean path's before
# The overhead section's bare forwarder: the floor for any Python front that calls a hub per request.
PATH_FLOOR = "python floor"

RUN_FIGURES = (
    "ok",
    "errors",
    "error_kinds",
    "elapsed_s",
    "throughput_rps",
    "cpu_s",
    "machine_busy_cores",
    "cpu_window_s",
    "aborted",
    "tcp_during_run",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one benchmark run does: repetitions, counts, durations and concurrencies."""

    runs: int = 3
    quick: bool = False
    model: str = "digits"
    shape: tuple[int, ...] = (1, 64)
    sequential_requests: int = 2000
    sequential_warmup: int = 200
    overhead_concurrency: int = 16
    overhead_duration_s: float = 10.0
    overhead_warmup_s: float = 2.0
    batching_concurrency: int = 256
    link_delay_ms: float = 20.0
    batching_duration_s: float = 10.0
    batching_warmup_s: float = 2.0
    cost_concurrency: int = 64
    cost_duration_s: float = 10.0
    cost_warmup_s: float = 2.0

    @classmethod
    def make(cls, runs: int, quick: bool) -> Plan:
        if not quick:
            return cls(runs=runs)
        # About a tenth of everything; warm-ups stay long enough to open 256 connections over the link.
        return cls(
            runs=runs,
            quick=True,
            sequential_requests=200,
            sequential_warmup=20,
            overhead_duration_s=1.0,
            overhead_warmup_s=0.3,
            batching_duration_s=1.0,
            batching_warmup_s=1.0,  # 256 clients ramp up over the first half
            cost_duration_s=1.0,
            cost_warmup_s=0.3,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Bench:
    """What every scenario shares: the plan, the hub, a scratch folder, nginx (if installed), a printer."""

    plan: Plan
    hub: Hub
    workdir: Path
    nginx: str | None
    say: Callable[[str], None] = print


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run ``python -m bench.load`` for ``spec`` in a process of its own; its result without raw latencies."""
    args = [
        sys.executable, "-m", "bench.load", "--url", spec.url, "--model", spec.model, "--input", spec.input_name,
        "--shape", ",".join(map(str, spec.shape)), "--encoding", spec.encoding,
        "--concurrency", str(spec.concurrency), "--timeout", str(spec.timeout_s), "--max-seconds", str(spec.max_s),
        "--no-latencies",
    ]  # fmt: skip
    if spec.duration_s is not None:
        args += ["--duration", str(spec.duration_s), "--warmup", str(spec.warmup_s), "--ramp", str(spec.ramp_s)]
    else:
        args += ["--requests", str(spec.requests), "--warmup-requests", str(spec.warmup_requests)]
    for w in spec.watch:
        args += ["--watch-group" if w.group else "--watch", f"{w.name}={w.pid}"]
    done = procs.run(args, timeout_s=spec.max_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"bench.load exited with {done.returncode}: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def run_record(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run the report keeps: counts, throughput, latency percentiles, CPU."""
    record = {k: result.get(k) for k in RUN_FIGURES}
    summary = result["summary"]
    record.update({k: summary[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")})
    return record


def gateway_config(hub_url: str) -> dict[str, Any]:
    """The gateway's config: one hub, the local backend off (the hub serves everything), defaults otherwise."""
    return {"hubs": [{"name": "hub", "url": hub_url}], "local": {"enabled": False}}


def start_gateway(b: Bench, hub_url: str) -> Gateway:
    """A gateway in front of ``hub_url``, up and serving the plan's model (StartError if not)."""
    gateway = Gateway(b.workdir, gateway_config(hub_url)).start(90)
    if b.plan.model not in gateway.models:
        gateway.stop()
        raise StartError(gateway.child.name, f"does not serve {b.plan.model!r}", f"models={','.join(gateway.models)}")
    return gateway


def batch_totals(text: str) -> dict[str, float]:
    """Batches, rows and flush reasons from the gateway's Prometheus text (summed over labels)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("railgate_batch_size_count", "railgate_batch_size_sum"):
                key = "batches" if sample.name.endswith("count") else "rows"
            elif sample.name == "railgate_batches_total":
                key = f"flush_{sample.labels.get('reason', '?')}"
            else:
                continue
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def batch_counters(gateway_url: str) -> dict[str, float]:
    """The gateway's batch counters now (empty if /metrics cannot be read)."""
    try:
        with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=5) as reply:
            return batch_totals(reply.read().decode())
    except (OSError, ValueError):
        return {}


def gateway_run(gateway_url: str, spec: LoadSpec) -> dict[str, Any]:
    """``run_load`` against the gateway, plus the batches it sent meanwhile (warm-up included)."""
    return with_batches(gateway_url, lambda: run_record(run_load(spec)))


def with_batches(gateway_url: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s record, plus the batches the gateway sent meanwhile (warm-up included), from its /metrics."""
    before = batch_counters(gateway_url)
    record = run()
    after = batch_counters(gateway_url)
    counts = {k: v - before.get(k, 0.0) for k, v in after.items()}
    record["gateway_batches"] = {k: v for k, v in counts.items() if v}
    batches = counts.get("batches", 0.0)
    record["mean_batch_rows"] = counts.get("rows", 0.0) / batches if batches else None
    return record


def _runs(section: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    """The run list of the case with these fields, created on first use (so an interrupted section keeps its runs)."""
    for case in section["cases"]:
        if all(case.get(k) == v for k, v in fields.items()):
            return case["runs"]
    section["cases"].append({**fields, "runs": []})
    return section["cases"][-1]["runs"]


def _progress(b: Bench, what: str, record: dict[str, Any]) -> None:
    errors = f" errors={record['errors']}" if record["errors"] else ""
    b.say(
        f"  {what:34s} {record['throughput_rps']:8.0f} req/s  p50 {record['p50_ms']:7.2f} ms"
        f"  p99 {record['p99_ms']:7.2f} ms{errors}"
    )


def overhead(b: Bench, section: dict[str, Any]) -> None:
    """Latency straight to the hub vs through the gateway vs through nginx, at concurrency 1 and 16."""
    plan = b.plan
    section.update(skipped=[], cases=[])
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(start_gateway(b, b.hub.http_url))
        section["gateway_config"] = gateway.config
        hub_watch = Watch("hub", b.hub.pid, group=True)
        paths = {"direct": (b.hub.http_url, ()), "gateway": (gateway.url, (Watch("gateway", gateway.pid),))}
        floor = stack.enter_context(start_forward_floor(b.hub.http_url))
        assert floor.ready_match is not None
        floor_url = f"http://127.0.0.1:{floor.ready_match.group(1)}"
        paths[PATH_FLOOR] = (floor_url, (Watch(PATH_FLOOR, floor.pid),))
        if b.nginx:
            nginx = stack.enter_context(Nginx("nginx", b.nginx, b.hub.config.http_port, b.workdir))
            paths["nginx"] = (nginx.url, (Watch("nginx", nginx.pid, group=True),))
        else:
            b.say(MISSING_ROW)
            section["skipped"].append(MISSING_ROW)
        c = plan.overhead_concurrency
        for run in range(plan.runs):
            b.say(f"overhead run {run + 1}/{plan.runs}")
            for path, (url, watch) in paths.items():
                result = sequential_tritonclient(
                    url,
                    plan.model,
                    plan.sequential_requests,
                    plan.sequential_warmup,
                    shape=plan.shape,
                    watch=(hub_watch, *watch),
                )
                record = run_record(result)
                client = "tritonclient.http sync, binary_data=True"
                _runs(section, path=path, concurrency=1, client=client).append(record)
                _progress(b, f"c=1 {path}", record)
            for path, (url, watch) in paths.items():
                spec = LoadSpec(
                    url=url,
                    model=plan.model,
                    shape=plan.shape,
                    encoding="binary",
                    concurrency=c,
                    duration_s=plan.overhead_duration_s,
                    warmup_s=plan.overhead_warmup_s,
                    max_s=plan.overhead_warmup_s + plan.overhead_duration_s + 30,
                    watch=(hub_watch, *watch),
                )
                record = gateway_run(url, spec) if path == "gateway" else run_record(run_load(spec))
                client = "bench.load (aiohttp), binary tensors"
                _runs(section, path=path, concurrency=c, client=client).append(record)
                _progress(b, f"c={c} {path}", record)


def system_cpu_us(record: dict[str, Any], proxy: str) -> float | None:
    """CPU per answered inference of the hub plus the proxy in front of it (none for ``direct``); the
    emulated backbone link is not counted: in production it is the network."""
    cpu = record.get("cpu_s") or {}
    parts = [cpu.get("hub")] + ([] if proxy == "direct" else [cpu.get(proxy)])
    if not record.get("ok") or any(p is None for p in parts):
        return None
    return sum(parts) / record["ok"] * 1e6  # type: ignore[arg-type]


def batching(b: Bench, section: dict[str, Any]) -> None:
    """Closed-loop clients behind ``railgate link``: straight over the link vs gateway vs nginx in front of it."""
    plan = b.plan
    section.update(skipped=[], cases=[], link_delay_ms=plan.link_delay_ms)
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(Link(b.hub.config.http_port, plan.link_delay_ms))
        gateway = stack.enter_context(start_gateway(b, link.url))
        section["gateway_config"] = gateway.config
        base = (Watch("hub", b.hub.pid, group=True), Watch("link", link.pid))
        paths = {"direct": (link.url, ()), "gateway": (gateway.url, (Watch("gateway", gateway.pid),))}
        if b.nginx:
            nginx = stack.enter_context(Nginx("nginx-link", b.nginx, link.port, b.workdir))
            paths["nginx"] = (nginx.url, (Watch("nginx", nginx.pid, group=True),))
        else:
            b.say(MISSING_ROW)
            section["skipped"].append(MISSING_ROW)
        c = plan.batching_concurrency
        for run in range(plan.runs):
            b.say(f"batching run {run + 1}/{plan.runs} ({c} clients, link {plan.link_delay_ms:g} ms each way)")
            for path, (url, watch) in paths.items():
                spec = LoadSpec(
                    url=url,
                    model=plan.model,
                    shape=plan.shape,
                    concurrency=c,
                    duration_s=plan.batching_duration_s,
                    warmup_s=plan.batching_warmup_s,
                    ramp_s=plan.batching_warmup_s / 2,
                    timeout_s=30.0,
                    max_s=plan.batching_warmup_s + plan.batching_duration_s + 60,
                    watch=(*base, *watch),
                )
                record = gateway_run(url, spec) if path == "gateway" else run_record(run_load(spec))
                record["system_cpu_us_per_inference"] = system_cpu_us(record, path)
                _runs(section, path=path, concurrency=c).append(record)
                _progress(b, f"{path}", record)


def start_forward_floor(hub_url: str) -> procs.Child:
    """``python -m bench.forward_floor`` (a bare aiohttp + uvloop forwarder over the gateway's hub client)."""
    child = procs.Child(
        [sys.executable, "-m", "bench.forward_floor", "--hub", hub_url],
        "forward floor",
        ready_line=r"forward floor listening 127\.0\.0\.1:(\d+)",
    )
    return child.start(30)


def start_echo() -> procs.Child:
    """``python -m bench.echo`` (a bare aiohttp + uvloop server answering a fixed body), up and listening."""
    child = procs.Child([sys.executable, "-m", "bench.echo"], "echo", ready_line=r"echo listening 127\.0\.0\.1:(\d+)")
    return child.start(30)


def start_grpc_echo(hub_url: str | None = None) -> procs.Child:
    """``python -m bench.grpc_echo`` (a bare grpc.aio + uvloop server answering a fixed reply), up and listening;
    with ``hub_url``, the gRPC forward floor (each call forwarded to that hub)."""
    args = [sys.executable, "-m", "bench.grpc_echo", *(("--hub", hub_url) if hub_url else ())]
    child = procs.Child(args, "grpc echo", ready_line=r"grpc echo listening 127\.0\.0\.1:(\d+)")
    return child.start(30)


def cost(b: Bench, section: dict[str, Any]) -> None:
    """Requests per CPU-second at saturation: the gateway per encoding (straight to the hub), a bare
    aiohttp + uvloop echo server (the floor for a Python front), the gateway with every request on
    aiohttp's server (``listen.lean_http: false``) and the gateway with ``--workers 2``."""
    plan = b.plan
    section.update(skipped=[], cases=[])
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(start_gateway(b, b.hub.http_url))
        section["gateway_config"] = gateway.config
        echo = stack.enter_context(start_echo())
        assert echo.ready_match is not None
        echo_url = f"http://127.0.0.1:{echo.ready_match.group(1)}"
        workers = Gateway(b.workdir, gateway_config(b.hub.http_url))
        workers.child.args += ["--workers", "2"]
        stack.enter_context(workers.start(90))
        plain = Gateway(b.workdir, {**gateway_config(b.hub.http_url), "listen": {"lean_http": False}})
        stack.enter_context(plain.start(90))
        hub = Watch("hub", b.hub.pid, group=True)
        # (server, encoding, url, watched process as "gateway": the echo server stands in its place)
        paths = [(SERVER_RAILGATE, e, gateway.url, Watch("gateway", gateway.pid)) for e in ENCODINGS]
        paths.append((SERVER_ECHO, "binary", echo_url, Watch("gateway", echo.pid)))
        paths.append((SERVER_AIOHTTP, "binary", plain.url, Watch("gateway", plain.pid)))
        paths.append((SERVER_WORKERS, "binary", workers.url, Watch("gateway", workers.pid, group=True)))
        for run in range(plan.runs):
            b.say(f"cost run {run + 1}/{plan.runs} (concurrency {plan.cost_concurrency})")
            for server, encoding, url, watch in paths:
                spec = LoadSpec(
                    url=url,
                    model=plan.model,
                    shape=plan.shape,
                    encoding=encoding,
                    concurrency=plan.cost_concurrency,
                    duration_s=plan.cost_duration_s,
                    warmup_s=plan.cost_warmup_s,
                    max_s=plan.cost_warmup_s + plan.cost_duration_s + 30,
                    watch=(watch, hub),
                )
                record = run_record(run_load(spec)) if server == SERVER_ECHO else gateway_run(url, spec)
                gateway_cpu = (record["cpu_s"] or {}).get("gateway")
                record["requests_per_gateway_cpu_s"] = record["ok"] / gateway_cpu if gateway_cpu else None
                record["gateway_cpu_us_per_request"] = gateway_cpu / record["ok"] * 1e6 if record["ok"] else None
                fields = {"encoding": encoding, "concurrency": plan.cost_concurrency}
                if server != SERVER_RAILGATE:
                    fields["server"] = server
                _runs(section, **fields).append(record)
                _progress(b, f"{server} {encoding}", record)


def grpc(b: Bench, section: dict[str, Any]) -> None:
    """The gRPC front against tritonclient.grpc straight to the hub (bench/grpc_bench.py)."""
    from bench.grpc_bench import grpc_section

    grpc_section(b, section, _runs)


def tracing(b: Bench, section: dict[str, Any]) -> None:
    """OpenTelemetry tracing off vs 1% vs 100% (bench/tracing_bench.py)."""
    from bench.tracing_bench import tracing_section

    tracing_section(b, section, _runs, run_record, run_load, _progress)


def state(b: Bench, section: dict[str, Any]) -> None:
    """Fleet state on a real Redis: a shared limit, the ledger under SIGKILL and a restart, the added p50."""
    from bench.fleet import measure

    figures = measure(b.workdir / "state", b.plan.runs, b.plan.quick, b.say)
    section["cases"] = [{"state": "fleet", "runs": [], "figures": figures}]


def tls(b: Bench, section: dict[str, Any]) -> None:
    """HTTPS and gRPC over TLS against the same gateway plain, c=1 and c=16 (bench/tls_bench.py)."""
    from bench.tls_bench import tls_section

    tls_section(b, section, _runs)


SECTIONS: dict[str, Callable[[Bench, dict[str, Any]], None]] = {
    "overhead": overhead,
    "batching": batching,
    "cost": cost,
    "grpc": grpc,
    "tracing": tracing,
    "state": state,
    "tls": tls,
}
