"""``python -m bench.edge_bench``: what the edge runtime adds on the device.

1. Local path overhead: ``EdgeRuntime.infer_sync`` against a bare ``InferenceSession.run`` of the same
   model (digits, batch 1), same input, same session options, interleaved in blocks so both see the
   same machine. Target: at most 10 us added at p50 (median over runs). Two device set-ups: offline
   (no gateway configured) and a configured gateway whose circuit is open (the decision consults the
   breaker and the predictors). The async ``infer`` (local runs go through the runtime's thread pool)
   is reported beside them.
2. Firmware path: the same call through ``railgate edge`` (a subprocess) over loopback TCP and over a
   Unix socket, msgpack and v2 JSON, from an aiohttp client at concurrency 1, beside the Python API.
   Target: Unix socket, msgpack, at most 200 us at p50.

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
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import onnxruntime as ort
import yaml

from bench.stats import percentile, spread
from devtools.procs import ROOT, Child, free_port
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


def _spread_of(runs: list[dict[str, float]], key: str) -> dict[str, float] | None:
    s = spread([r[key] for r in runs])
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
    """``railgate edge`` (via ``python -m edge.server``) on a Unix socket or a free TCP port; yields its base URL."""
    config = workdir / "edge.yaml"
    config.write_text(yaml.safe_dump({"repository": str(REPOSITORY), "models": [MODEL]}))
    args = [sys.executable, "-m", "edge.server", "--config", str(config), "--log-level", "WARNING"]
    args += ["--unix", str(unix)] if unix else ["--port", str(free_port())]
    # The banner's 4th word: http://127.0.0.1:PORT or unix:PATH
    with Child(args, "railgate edge", ready_line=r"railgate edge serving (\S+)").start(60) as edge:
        assert edge.ready_match is not None
        yield edge.ready_match.group(1)


async def _http_runs(where: str, encoding: str, iterations: int, runs: int) -> list[dict[str, float]]:
    x = _input()["pixels"]
    if encoding == "msgpack":
        tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.tobytes()}
        body, content_type = msgpack.packb({"inputs": [tensor]}), "application/msgpack"
    else:
        tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}
        body, content_type = json.dumps({"inputs": [tensor]}).encode(), "application/json"
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
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                await call()
                samples.append((time.perf_counter_ns() - t0) / 1000)
            out.append(_summary(samples))
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
        for transport in ("tcp", "unix"):
            with edge_server(workdir, unix=workdir / "edge.sock" if transport == "unix" else None) as where:
                for encoding in ("msgpack", "json"):
                    per_run = asyncio.run(_http_runs(where, encoding, iterations, runs))
                    result[f"{transport}_{encoding}"] = {k: _spread_of(per_run, k) for k in ("p50", "p99")}
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
            "| path | p50 | p99 |",
            "| --- | --- | --- |",
            f"| Python API `infer_sync` (in process) | {_us(fw['python_api']['p50'])} | {_us(fw['python_api']['p99'])} |",
        ]
        for key, label in [
            ("unix_msgpack", "Unix socket, msgpack"),
            ("unix_json", "Unix socket, v2 JSON"),
            ("tcp_msgpack", "loopback TCP, msgpack"),
            ("tcp_json", "loopback TCP, v2 JSON"),
        ]:
            lines.append(f"| {label} (aiohttp client) | {_us(fw[key]['p50'])} | {_us(fw[key]['p99'])} |")
        unix = fw["unix_msgpack"]["p50"]
        met = unix is not None and unix["median"] <= TARGET_UNIX_MSGPACK_P50_US
        lines += [
            "",
            f"Target: Unix socket, msgpack, p50 <= {TARGET_UNIX_MSGPACK_P50_US:.0f} us: {'met' if met else '**missed**'}.",
        ]
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
