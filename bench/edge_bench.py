"""``python -m bench.edge_bench``: what the edge runtime adds on the device.

1. Local path overhead: ``EdgeRuntime.infer_sync`` against a bare ``InferenceSession.run`` of the same
   model (digits, batch 1), same input, same session options, interleaved in blocks so both see the
   same machine. Target: at most 10 us added at p50 (median over runs). Two device set-ups: offline
   (no gateway configured) and a configured gateway whose circuit is open (the decision consults the
   breaker and the predictors). The async ``infer`` (local runs go through the runtime's thread pool)
   is reported beside them.
2. Firmware path: the same call through ``railgate edge`` (a subprocess) over loopback TCP and over a
   Unix socket, msgpack and v2 JSON, from an aiohttp client at concurrency 1, beside the Python API;
   and msgpack from a lean client, what device firmware would use (one blocking socket, the request
   pre-built, Content-Length framing), which leaves mostly the server's own cost in the round trip.
   Each row also gives the server's CPU per call (its utime + stime over the row's calls, /proc).
   Target: Unix socket, msgpack, at most 200 us at p50.
   The lean Unix-socket row is measured a second time with every core kept awake (one ``nice 19`` busy
   loop per core, which yields to any other work at once): a diagnostic of what the machine's idle
   waits cost. On a VM whose idle cores halt at once (``guest_halt_poll_ns=0``) each round trip waits
   on a VM exit and cold caches; the report names the machine's idle policy.

Prints a markdown table and writes ``reports/bench/edge.json`` and ``edge.md``. Figures, not tests:
nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import onnxruntime as ort
import yaml

from bench.procstat import idle_policy
from bench.stats import percentile, spread
from devtools.procs import ROOT, Child, free_port, spawn, terminate
from edge import EdgeRuntime, parse_edge_config
from edge.engine import session_options

REPOSITORY = ROOT / "models" / "repository"
MODEL = "digits"
TARGET_ADDED_P50_US = 10.0  # issue 14: infer_sync over a bare InferenceSession.run
TARGET_UNIX_MSGPACK_P50_US = 200.0  # issue 14: the firmware path over a Unix socket, msgpack


def _input(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pixels": (rng.random((1, 64)) * 16).astype(np.float32)}


def _timed(call: Callable[[], object], iterations: int) -> list[float]:
    """Per-call latencies in microseconds."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        t0 = clock()
        call()
        out.append((clock() - t0) / 1000)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p99": percentile(samples, 99), "n": len(samples)}


def _spread_of(runs: Sequence[Mapping[str, float | None]], key: str) -> dict[str, float] | None:
    s = spread([r[key] for r in runs])  # a run that could not measure it (a server's CPU) is left out
    return s.as_dict() if s else None


# -- 1. local path overhead ---------------------------------------------------------------------


def local_overhead(iterations: int, runs: int, block: int = 500) -> dict[str, Any]:
    x = _input()
    onnx = (REPOSITORY / MODEL / "1" / "model.onnx").read_bytes()
    closed = f"http://127.0.0.1:{free_port()}"
    setups = {
        "offline": {},
        "gateway_circuit_open": {
            "gateway_url": closed,
            "sync": {"enabled": False},
            "probe_interval_s": 0,
            "circuit": {"failure_threshold": 1, "backoff_s": 3600, "max_backoff_s": 3600},
        },
    }
    result: dict[str, Any] = {"model": MODEL, "batch": 1, "iterations_per_run": iterations, "runs": runs}
    for name, extra in setups.items():
        config = parse_edge_config({"repository": str(REPOSITORY), "models": [MODEL], **extra})
        with EdgeRuntime(config) as rt:
            bare = ort.InferenceSession(onnx, session_options(1, 1), providers=rt.providers)
            for _ in range(3):  # open the circuit (closed port: refused at once)
                rt.infer_sync(MODEL, x, budget_ms=1000)
            reason = rt.infer_sync(MODEL, x).reason
            per_run = []
            for _ in range(runs):
                gc.collect()
                bare_us: list[float] = []
                edge_us: list[float] = []
                for _ in range(max(iterations // block, 1)):  # interleaved blocks: both see the same machine
                    bare_us += _timed(partial(bare.run, None, x), block)
                    edge_us += _timed(partial(rt.infer_sync, MODEL, x), block)
                b, e = _summary(bare_us), _summary(edge_us)
                per_run.append(
                    {"bare_p50": b["p50"], "bare_p99": b["p99"], "edge_p50": e["p50"], "edge_p99": e["p99"],
                     "added_p50": e["p50"] - b["p50"], "added_p99": e["p99"] - b["p99"]}
                )  # fmt: skip
            async_runs = _async_runs(rt, x, iterations, runs)
        keys = ("bare_p50", "bare_p99", "edge_p50", "edge_p99", "added_p50", "added_p99")
        result[name] = {
            "reason": reason,
            "runs": per_run,
            **{k: _spread_of(per_run, k) for k in keys},
            "async": {k: _spread_of(async_runs, k) for k in ("p50", "p99")},
        }
    worst = max(result[n]["added_p50"]["median"] for n in setups)
    result["target_added_p50_us"] = TARGET_ADDED_P50_US
    result["met"] = worst <= TARGET_ADDED_P50_US
    return result


def _async_runs(rt: EdgeRuntime, x: dict[str, np.ndarray], iterations: int, runs: int) -> list[dict[str, float]]:
    async def measure() -> list[float]:
        out = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            await rt.infer(MODEL, x)
            out.append((time.perf_counter_ns() - t0) / 1000)
        return out

    assert rt._loop is not None  # the runtime's own loop (start_sync): where async callers live
    return [_summary(asyncio.run_coroutine_threadsafe(measure(), rt._loop).result()) for _ in range(runs)]


# -- 2. firmware path ------------------------------------------------------------------------------


@contextmanager
def edge_server(workdir: Path, *, unix: Path | None = None):
    """``railgate edge`` (via ``python -m edge.server``) on a Unix socket or a free TCP port; yields its base URL
    and its pid."""
    config = workdir / "edge.yaml"
    config.write_text(yaml.safe_dump({"repository": str(REPOSITORY), "models": [MODEL]}))
    args = [sys.executable, "-m", "edge.server", "--config", str(config), "--log-level", "WARNING"]
    args += ["--unix", str(unix)] if unix else ["--port", str(free_port())]
    # The banner's 4th word: http://127.0.0.1:PORT or unix:PATH
    with Child(args, "railgate edge", ready_line=r"railgate edge serving (\S+)").start(60) as edge:
        assert edge.ready_match is not None
        yield edge.ready_match.group(1), edge.pid


def _cpu_s(pid: int) -> float | None:
    """A process's CPU seconds so far (user + system, from /proc); None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_us_per_call(before: float | None, after: float | None, calls: int) -> float | None:
    return None if before is None or after is None else (after - before) / calls * 1e6


def _body(encoding: str) -> tuple[bytes, str]:
    x = _input()["pixels"]
    if encoding == "msgpack":
        tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.tobytes()}
        return msgpack.packb({"inputs": [tensor]}), "application/msgpack"
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), "application/json"


class LeanClient:
    """What device firmware would use: one blocking socket (Unix or TCP), a pre-built request, Content-Length
    framing of the reply; no event loop, no client library."""

    def __init__(self, where: str, body: bytes, content_type: str) -> None:
        head = (
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: edge\r\nContent-Type: {content_type}\r\n"
            f"X-Latency-Budget-Ms: 100\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        if where.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(where.removeprefix("unix:"))
        else:
            host, port = where.removeprefix("http://").rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(30)
        self.buffer = b""

    def call(self) -> None:
        self.sock.sendall(self.request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = self.buffer[:end].decode("latin-1")
        status = head.split(" ", 2)[1]
        length = next(
            (
                int(v)
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
                if k.lower() == "content-length"
            ),
            None,
        )
        if length is None:
            raise RuntimeError(f"edge answered without a Content-Length: {head!r}")
        while len(self.buffer) < end + 4 + length:
            self._fill()
        self.buffer = self.buffer[end + 4 + length :]
        if status != "200":
            raise RuntimeError(f"edge answered {status}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("edge closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@contextmanager
def cores_kept_awake():
    """One ``nice 19`` busy loop per core while the block runs: a core never goes idle, so it never halts,
    and any other process preempts the loop at once (its CPU is its own: the server's per-call CPU is
    read from the server's /proc entry). A diagnostic, stopped by its handles."""
    loops = [spawn(["nice", "-n", "19", sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        _until_running(loops, timeout_s=10.0)
        yield
    finally:
        for loop in loops:
            terminate(loop, timeout_s=5.0)


def _until_running(loops: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Wait until every loop has exec'd this interpreter (a forked child is a copy of this process until then, so
    a measurement started at once could run beside fewer loops than it asked for); one that exits fails at once."""
    want = os.path.realpath(sys.executable)
    deadline = time.monotonic() + timeout_s
    while True:
        exited = [loop.pid for loop in loops if loop.poll() is not None]
        if exited:
            raise RuntimeError(f"busy loops {exited} exited before the block began")
        pending = [loop.pid for loop in loops if _exe(loop.pid) != want]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"busy loops {pending} did not start {want} within {timeout_s:.0f} s")
        time.sleep(0.005)  # polling a condition with a deadline


def _exe(pid: int) -> str | None:
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


def _lean_runs(where: str, pid: int, encoding: str, iterations: int, runs: int) -> list[dict[str, float | None]]:
    client = LeanClient(where, *_body(encoding))
    out = []
    try:
        for _ in range(200):  # warm the connection and the server's code paths
            client.call()
        for _ in range(runs):
            cpu = _cpu_s(pid)
            samples = _timed(client.call, iterations)
            out.append({**_summary(samples), "server_cpu_us": _cpu_us_per_call(cpu, _cpu_s(pid), iterations)})
    finally:
        client.close()
    return out


async def _http_runs(where: str, pid: int, encoding: str, iterations: int, runs: int) -> list[dict[str, float | None]]:
    body, content_type = _body(encoding)
    if where.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=where.removeprefix("unix:"))
        url = f"http://edge/v2/models/{MODEL}/infer"
    else:
        connector = aiohttp.TCPConnector()
        url = f"{where}/v2/models/{MODEL}/infer"
    headers = {"Content-Type": content_type, "X-Latency-Budget-Ms": "100"}
    out = []
    async with aiohttp.ClientSession(connector=connector) as http:

        async def call() -> None:
            async with http.post(url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"edge answered {reply.status}")

        for _ in range(200):  # warm the connection and both sides' code paths
            await call()
        for _ in range(runs):
            samples = []
            cpu = _cpu_s(pid)
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                await call()
                samples.append((time.perf_counter_ns() - t0) / 1000)
            out.append({**_summary(samples), "server_cpu_us": _cpu_us_per_call(cpu, _cpu_s(pid), iterations)})
    return out


def firmware_path(iterations: int, runs: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rg-edge-bench-"))
    result: dict[str, Any] = {"model": MODEL, "batch": 1, "iterations_per_run": iterations, "runs": runs}
    try:
        config = parse_edge_config({"repository": str(REPOSITORY), "models": [MODEL]})
        with EdgeRuntime(config) as rt:
            x = _input()
            _timed(lambda: rt.infer_sync(MODEL, x), 500)
            api = [_summary(_timed(lambda: rt.infer_sync(MODEL, x), iterations)) for _ in range(runs)]
        result["python_api"] = {k: _spread_of(api, k) for k in ("p50", "p99")}
        keys = ("p50", "p99", "server_cpu_us")
        for transport in ("tcp", "unix"):
            with edge_server(workdir, unix=workdir / "edge.sock" if transport == "unix" else None) as (where, pid):
                for encoding in ("msgpack", "json"):
                    per_run = asyncio.run(_http_runs(where, pid, encoding, iterations, runs))
                    result[f"{transport}_{encoding}"] = {k: _spread_of(per_run, k) for k in keys}
                lean = _lean_runs(where, pid, "msgpack", iterations, runs)
                result[f"{transport}_msgpack_lean"] = {k: _spread_of(lean, k) for k in keys}
                if transport == "unix":
                    with cores_kept_awake():
                        awake = _lean_runs(where, pid, "msgpack", iterations, runs)
                    result["unix_msgpack_lean_awake"] = {k: _spread_of(awake, k) for k in keys}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- report ---------------------------------------------------------------------------------------


def _us(s: dict[str, float] | None, sign: bool = False) -> str:
    if s is None:
        return "—"
    f = "{:+.1f}" if sign else "{:.1f}"
    return f"{f.format(s['median'])} [{f.format(s['min'])}, {f.format(s['max'])}]"


def markdown(report: dict[str, Any]) -> str:
    local = report["local_overhead"]
    lines = [
        "# Edge runtime benchmark",
        "",
        f"{report['machine']}; onnxruntime {report['onnxruntime']} ({', '.join(report['providers'])}).",
        f"Idle cores: {report.get('idle_policy') or 'unknown (no cpuidle in sysfs)'}.",
        "Figures in microseconds: median over runs [min, max].",
        "",
        f"## 1. Local path overhead ({local['model']}, batch 1, {local['runs']} runs x {local['iterations_per_run']} calls)",
        "",
        "| device set-up | decision | bare run p50 | bare run p99 | `infer_sync` p50 | `infer_sync` p99 "
        "| added p50 | added p99 | async `infer` p50 | async `infer` p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("offline", "gateway_circuit_open"):
        c = local[name]
        lines.append(
            f"| {name.replace('_', ' ')} | `{c['reason']}` | {_us(c['bare_p50'])} | {_us(c['bare_p99'])} "
            f"| {_us(c['edge_p50'])} | {_us(c['edge_p99'])} | {_us(c['added_p50'], True)} "
            f"| {_us(c['added_p99'], True)} | {_us(c['async']['p50'])} | {_us(c['async']['p99'])} |"
        )
    verdict = "met" if local["met"] else "**missed**"
    lines += [
        "",
        f"Target: `EdgeRuntime.infer_sync` adds <= {local['target_added_p50_us']:.0f} us at p50 over a bare "
        f"`InferenceSession.run`: {verdict}.",
        "",
    ]
    fw = report.get("firmware_path")
    if fw:
        lines += [
            f"## 2. Firmware path ({fw['model']}, batch 1, concurrency 1, {fw['runs']} runs x {fw['iterations_per_run']} calls)",
            "",
            "| path | p50 | p99 | server CPU per call |",
            "| --- | --- | --- | --- |",
            f"| Python API `infer_sync` (in process) | {_us(fw['python_api']['p50'])} | {_us(fw['python_api']['p99'])} | — |",
        ]
        for key, label in [
            ("unix_msgpack", "Unix socket, msgpack (aiohttp client)"),
            ("unix_json", "Unix socket, v2 JSON (aiohttp client)"),
            ("tcp_msgpack", "loopback TCP, msgpack (aiohttp client)"),
            ("tcp_json", "loopback TCP, v2 JSON (aiohttp client)"),
            ("unix_msgpack_lean", "Unix socket, msgpack (lean client: blocking socket, pre-built request)"),
            ("tcp_msgpack_lean", "loopback TCP, msgpack (lean client: blocking socket, pre-built request)"),
            ("unix_msgpack_lean_awake", "diagnostic: Unix socket, msgpack, lean client, every core kept awake"),
        ]:
            row = fw.get(key)
            if row is not None:
                lines.append(f"| {label} | {_us(row['p50'])} | {_us(row['p99'])} | {_us(row.get('server_cpu_us'))} |")
        lines.append("")
        for key, client in (("unix_msgpack", "aiohttp client"), ("unix_msgpack_lean", "lean client")):
            p50 = fw.get(key, {}).get("p50")
            met = p50 is not None and p50["median"] <= TARGET_UNIX_MSGPACK_P50_US
            lines.append(
                f"- Target: Unix socket, msgpack, p50 <= {TARGET_UNIX_MSGPACK_P50_US:.0f} us ({client}): "
                f"{'met' if met else '**missed**'}."
            )
        awake = fw.get("unix_msgpack_lean_awake", {}).get("p50")
        if awake is not None:
            lines.append(
                f"- Diagnostic, not the target: the lean Unix-socket row with every core kept awake (a `nice 19` busy "
                f"loop per core) has p50 {awake['median']:.1f} us. The gap to the plain row is what this machine's "
                f"idle waits cost a round trip ({report.get('idle_policy') or 'idle policy unknown'})."
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000, help="calls per run, local overhead")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--http-iterations", type=int, default=2000, help="calls per run, firmware path")
    parser.add_argument("--http-runs", type=int, default=3)
    parser.add_argument("--skip-http", action="store_true", help="local overhead only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    logging.getLogger("railgate.edge").setLevel(logging.ERROR)  # the closed-port set-up opens a circuit on purpose
    if not (REPOSITORY / "manifest.json").is_file():
        print(f"no model repository at {REPOSITORY}: run `railgate models build` first", file=sys.stderr)
        return 1
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "idle_policy": idle_policy(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "local_overhead": local_overhead(args.iterations, args.runs),
    }
    if not args.skip_http:
        report["firmware_path"] = firmware_path(args.http_iterations, args.http_runs)
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edge.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "edge.md").write_text(text + "\n")
    print(f"wrote {args.out / 'edge.json'} and {args.out / 'edge.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
