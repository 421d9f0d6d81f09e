"""A closed-loop load generator for the KServe v2 infer endpoint: ``python -m bench.load ...``.

``concurrency`` clients each send their next request when the previous one answers, for a fixed
number of requests (``--requests``, after ``--warmup-requests``) or a fixed time (``--duration``,
after ``--warmup``), in one of three encodings: Triton's binary tensor extension, v2 JSON, or
msgpack. It prints one JSON object on stdout: latencies, errors, throughput, and the CPU seconds
its own process and the watched processes (``--watch gateway=PID``, ``--watch-group hub=PGID``)
spent during the measured window.

It runs in a process of its own (aiohttp on uvloop) so that its CPU is not the benchmark's, and
measures that CPU too: on a 2-core machine the generator competes with what it drives.

Duration runs count the requests that *complete* inside the window (so throughput is unbiased);
requests still in flight at its end are awaited (up to ``--timeout``) and not counted. Every run is
bounded by ``--max-seconds`` whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench import procstat
from bench.stats import latency_summary

ENCODINGS = ("binary", "json", "msgpack")
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True, slots=True)
class Watch:
    """A process (or, with ``group``, a process group) whose CPU time the run reports."""

    name: str
    pid: int
    group: bool = False

    def cpu_s(self) -> float | None:
        return procstat.group_cpu_s(self.pid) if self.group else procstat.process_cpu_s(self.pid)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str  # http://host:port of a v2 server
    model: str = "digits"
    input_name: str = "pixels"
    shape: tuple[int, ...] = (1, 64)
    encoding: str = "binary"
    concurrency: int = 16
    requests: int | None = None  # a fixed count (after warmup_requests) ...
    duration_s: float | None = None  # ... or a fixed window (after warmup_s)
    warmup_requests: int = 0
    warmup_s: float = 0.0
    ramp_s: float = 0.0  # clients start one by one over this long, so connections do not arrive as one burst
    timeout_s: float = 10.0  # one request
    max_s: float = 300.0  # the whole run, whatever happens
    watch: tuple[Watch, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of requests and duration_s")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if min(self.warmup_requests, self.warmup_s, self.ramp_s) < 0 or not (self.timeout_s > 0 and self.max_s > 0):
            raise ValueError("warm-up and ramp must be >= 0; timeout_s and max_s must be > 0")


def encode_request(encoding: str, input_name: str, data: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one infer request carrying ``data`` (FP32) in ``encoding``."""
    tensor: dict[str, Any] = {"name": input_name, "datatype": "FP32", "shape": list(data.shape)}
    raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
    if encoding == "binary":
        header = {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        return head + raw, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
    if encoding == "json":
        body = json.dumps({"inputs": [{**tensor, "data": data.ravel().tolist()}]}, separators=(",", ":"))
        return body.encode(), {"Content-Type": "application/json"}
    import msgpack

    return msgpack.packb({"inputs": [{**tensor, "data": raw}]}, use_bin_type=True), {
        "Content-Type": "application/msgpack"
    }


def reply_problem(encoding: str, status: int, headers: Any, body: bytes) -> str | None:
    """None for a well-formed successful reply, else a short error kind (``http_503``, ``bad_reply``)."""
    if status != 200:
        return f"http_{status}"
    try:
        if encoding == "msgpack":
            import msgpack

            document = msgpack.unpackb(body, raw=False)
        else:
            length = headers.get(HEADER_LENGTH)
            document = json.loads(body[: int(length)] if length is not None else body)
        outputs = document["outputs"]
        ok = isinstance(outputs, list) and len(outputs) > 0 and all("name" in o for o in outputs)
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else "bad_reply"


@dataclass(slots=True)
class _Window:
    """What the measured window collected (requests and CPU)."""

    start: float
    end: float | None  # None: a count run, open until the last request answers
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_start: dict[str, float | None] = field(default_factory=dict)
    cpu_end: dict[str, float | None] = field(default_factory=dict)
    cpu_t0: float = math.nan
    cpu_t1: float = math.nan

    def counts(self, done: float) -> bool:
        return self.start <= done and (self.end is None or done <= self.end)


def cpu_sample(watch: tuple[Watch, ...]) -> dict[str, float | None]:
    """CPU seconds so far of each watched process, of this process (``loadgen``) and of the machine."""
    sample: dict[str, float | None] = {w.name: w.cpu_s() for w in watch}
    sample["loadgen"] = time.process_time()
    machine = procstat.machine_cpu_s()
    sample["_machine_busy"] = machine[0] if machine else None
    return sample


async def generate(spec: LoadSpec) -> dict[str, Any]:
    """Run the load described by ``spec``; return the result document ``python -m bench.load`` prints."""
    import aiohttp

    rng = np.random.default_rng(spec.seed)
    data = rng.uniform(0.0, 16.0, size=spec.shape).astype(np.float32)  # the digits model's pixel range
    body, headers = encode_request(spec.encoding, spec.input_name, data)
    path = f"{spec.url.rstrip('/')}/v2/models/{spec.model}/infer"
    tcp_before = procstat.tcp_counters()
    t_begin = time.perf_counter()
    if spec.duration_s is not None:
        window = _Window(start=t_begin + spec.warmup_s, end=t_begin + spec.warmup_s + spec.duration_s)
    else:
        window = _Window(start=math.inf, end=None)
    tickets = iter(range(spec.warmup_requests + (spec.requests or 0)))

    def open_window() -> None:
        window.cpu_start, window.cpu_t0 = cpu_sample(spec.watch), time.perf_counter()

    def close_window() -> None:
        window.cpu_end, window.cpu_t1 = cpu_sample(spec.watch), time.perf_counter()

    async def timed_sampler() -> None:
        assert window.end is not None
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        open_window()
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        close_window()

    def next_request() -> bool:
        """Whether this client sends another request (and, in a count run, opens the window)."""
        if window.end is not None:
            return time.perf_counter() < window.end
        ticket = next(tickets, None)
        if ticket is None:
            return False
        if ticket == spec.warmup_requests:  # the first measured request
            window.start = time.perf_counter()
            open_window()
        return True

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        await asyncio.sleep(spec.ramp_s * index / spec.concurrency)
        checked = False
        while next_request():
            t0 = time.perf_counter()
            problem: str | None
            try:
                async with session.post(path, data=body, headers=headers) as reply:
                    payload = await reply.read()
                problem = (
                    None
                    if checked and reply.status == 200
                    else reply_problem(spec.encoding, reply.status, reply.headers, payload)
                )
                checked = checked or problem is None  # the first good reply of each client is parsed in full
            except TimeoutError:
                problem = "timeout"
            except (aiohttp.ClientError, OSError) as exc:
                problem = type(exc).__name__
            done = time.perf_counter()
            if window.counts(t0 if window.end is None else done):
                if problem is None:
                    window.latencies_ms.append((done - t0) * 1000)
                else:
                    window.errors[problem] += 1
            if problem is not None and problem != "timeout":
                await asyncio.sleep(0.01)  # a refused connection must not become a busy loop

    connector = aiohttp.TCPConnector(limit=spec.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    aborted = False
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as s:
        tasks = [asyncio.ensure_future(client(s, i)) for i in range(spec.concurrency)]
        if window.end is not None:
            tasks.append(asyncio.ensure_future(timed_sampler()))
        try:
            async with asyncio.timeout(spec.max_s):
                await asyncio.gather(*tasks)
            if window.end is None and window.cpu_start:
                close_window()  # a count run's window closes when its last request answers
        except TimeoutError:
            aborted = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if window.cpu_start and not window.cpu_end:
        close_window()  # aborted: the window closes now
    result = _result(spec, window, aborted, time.perf_counter() - t_begin)
    tcp_after = procstat.tcp_counters()
    result["tcp_during_run"] = {k: v - tcp_before[k] for k, v in tcp_after.items() if k in tcp_before}
    return result


def _result(spec: LoadSpec, window: _Window, aborted: bool, wall_s: float) -> dict[str, Any]:
    ok = len(window.latencies_ms)
    if window.end is not None:
        elapsed = window.end - window.start
    else:
        elapsed = window.cpu_t1 - window.cpu_t0 if math.isfinite(window.cpu_t1 - window.cpu_t0) else math.nan
    cpu_s: dict[str, float | None] = {}
    for name, before in window.cpu_start.items():
        after = window.cpu_end.get(name)
        cpu_s[name] = after - before if before is not None and after is not None else None
    busy = cpu_s.pop("_machine_busy", None)
    cpu_window = window.cpu_t1 - window.cpu_t0
    return {
        "spec": {**asdict(spec), "watch": [asdict(w) for w in spec.watch]},
        "ok": ok,
        "errors": sum(window.errors.values()),
        "error_kinds": dict(window.errors),
        "elapsed_s": elapsed,
        "wall_s": wall_s,
        "throughput_rps": ok / elapsed if elapsed and math.isfinite(elapsed) else math.nan,
        "summary": latency_summary(window.latencies_ms),
        "cpu_s": cpu_s,
        "cpu_window_s": cpu_window,
        "machine_busy_cores": busy / cpu_window if busy is not None and cpu_window > 0 else None,
        "aborted": aborted,
        "latencies_ms": [round(v, 4) for v in window.latencies_ms],
    }


# --- command line -----------------------------------------------------------------------------


def _watch(group: bool):
    def parse(text: str) -> Watch:
        name, sep, pid = text.partition("=")
        if not sep or not name or not pid.isdigit():
            raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
        return Watch(name, int(pid), group)

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="http://host:port of a KServe v2 server")
    p.add_argument("--model", default="digits")
    p.add_argument("--input", default="pixels", help="input tensor name (FP32)")
    p.add_argument("--shape", default="1,64", help="input shape, comma-separated")
    p.add_argument("--encoding", choices=ENCODINGS, default="binary")
    p.add_argument("--concurrency", type=int, default=16)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--requests", type=int, help="measured requests (after --warmup-requests)")
    mode.add_argument("--duration", type=float, help="measured seconds (after --warmup)")
    p.add_argument("--warmup-requests", type=int, default=0)
    p.add_argument("--warmup", type=float, default=0.0, help="seconds before the window (duration runs)")
    p.add_argument("--ramp", type=float, default=0.0, help="start the clients one by one over this many seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    p.add_argument("--max-seconds", type=float, default=300.0, help="bound on the whole run")
    p.add_argument("--watch", type=_watch(False), action="append", default=[], metavar="NAME=PID")
    p.add_argument("--watch-group", type=_watch(True), action="append", default=[], metavar="NAME=PGID")
    p.add_argument("--no-latencies", action="store_true", help="leave the raw latencies out of the output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = LoadSpec(
            url=args.url,
            model=args.model,
            input_name=args.input,
            shape=tuple(int(d) for d in args.shape.split(",")),
            encoding=args.encoding,
            concurrency=args.concurrency,
            requests=args.requests,
            duration_s=args.duration,
            warmup_requests=args.warmup_requests,
            warmup_s=args.warmup,
            ramp_s=args.ramp,
            timeout_s=args.timeout,
            max_s=args.max_seconds,
            watch=(*args.watch, *args.watch_group),
        )
    except ValueError as exc:
        print(f"bench.load: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        result = uvloop.run(generate(spec))
    except ImportError:
        result = asyncio.run(generate(spec))
    if args.no_latencies:
        result.pop("latencies_ms")
    with contextlib.suppress(BrokenPipeError):
        json.dump(result, sys.stdout, allow_nan=True)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
