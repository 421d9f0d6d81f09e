"""The gRPC rows of ``make bench``: the gateway's gRPC front against tritonclient.grpc straight to the hub.

    c=1      sequential calls with tritonclient.grpc's sync client (an application's way)
    c=16     16 concurrent calls in a closed loop with tritonclient.grpc.aio
    stream   one ModelStreamInfer stream keeping ``window`` requests in flight

Each runs against the hub's own gRPC port ("direct"), the gateway's ("gateway") and a bare grpc.aio
echo server's (``GRPC_FLOOR``, bench/grpc_echo.py: what grpc.aio and protobuf cost alone) and, for the
unary rows, the same server forwarding each call to the hub (``GRPC_FORWARD_FLOOR``), paths
interleaved per run; the gateway's (and the echo's) CPU per request is read from /proc like the HTTP
rows'. The gateway talks to the hub over HTTP with binary tensors, its default hub protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench.load import Watch, cpu_sample
from bench.report import GRPC_FLOOR, GRPC_FORWARD_FLOOR
from bench.stats import latency_summary
from devtools.devstack import Gateway, Hub, Link, StartError, start_hub

STREAM_WINDOW = 64


def _cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    out = {}
    for name, value in after.items():
        start = before.get(name)
        if value is not None and start is not None:
            out[name] = value - start
    return out


def _record(latencies_ms: list[float], errors: int, elapsed: float, cpu: dict[str, float]) -> dict[str, Any]:
    busy = cpu.pop("_machine_busy", None)
    return {
        "ok": len(latencies_ms),
        "errors": errors,
        "error_kinds": {},
        "elapsed_s": elapsed,
        "throughput_rps": len(latencies_ms) / elapsed if elapsed else math.nan,
        "cpu_s": cpu,
        "machine_busy_cores": busy / elapsed if busy is not None and elapsed else None,
        "cpu_window_s": elapsed,
        "aborted": False,
        **{
            k: v
            for k, v in latency_summary(latencies_ms).items()
            if k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
        },
    }


def _inputs(grpc_module: Any, name: str, shape: tuple[int, ...]) -> list[Any]:
    tensor = grpc_module.InferInput(name, list(shape), "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32))
    return [tensor]


def sequential(address: str, model: str, requests: int, warmup: int, shape, watch) -> dict[str, Any]:
    """c=1 with the sync client, in this process (its CPU is ``loadgen``)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    try:
        name = client.get_model_metadata(model).inputs[0].name
        inputs = _inputs(grpcclient, name, shape)
        latencies, errors = [], 0
        for i in range(warmup + requests):
            if i == warmup:
                before, t_start = cpu_sample(watch), time.perf_counter()
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs)
            except grpcclient.InferenceServerException:
                errors += i >= warmup
                continue
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - t_start
        return _record(latencies, errors, elapsed, _cpu_delta(before, cpu_sample(watch)))
    finally:
        client.close()


async def _concurrent(address: str, model: str, concurrency: int, duration_s: float, warmup_s: float, shape, watch):
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(address)
    try:
        name = (await client.get_model_metadata(model)).inputs[0].name
        inputs = _inputs(aioclient, name, shape)
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        stop_at = measure_from + duration_s
        latencies: list[float] = []
        errors = 0
        marks: dict[str, Any] = {}

        async def worker() -> None:
            nonlocal errors
            while (now := loop.time()) < stop_at:
                if now >= measure_from and "before" not in marks:
                    marks["before"], marks["t"] = cpu_sample(watch), time.perf_counter()
                t0 = time.perf_counter()
                try:
                    await client.infer(model, inputs)
                except aioclient.InferenceServerException:
                    errors += now >= measure_from
                    continue
                if now >= measure_from:
                    latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - marks["t"]
        return _record(latencies, errors, elapsed, _cpu_delta(marks["before"], cpu_sample(watch)))
    finally:
        await client.close()


async def _stream(address: str, model: str, window: int, duration_s: float, warmup_s: float, shape, watch):
    """One ModelStreamInfer stream with ``window`` requests in flight; latency per request from send to answer."""
    import grpc
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(address)
    try:
        name = (await client.get_model_metadata(model)).inputs[0].name
        inputs = _inputs(aioclient, name, shape)
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        stop_at = measure_from + duration_s
        sent: dict[str, float] = {}
        credits = asyncio.Semaphore(window)
        done_sending = asyncio.Event()
        counter = iter(range(1 << 62))

        async def requests():
            while loop.time() < stop_at:
                await credits.acquire()
                request_id = str(next(counter))
                sent[request_id] = time.perf_counter()
                yield {"model_name": model, "inputs": inputs, "request_id": request_id}
            done_sending.set()

        latencies: list[float] = []
        errors = 0
        marks: dict[str, Any] = {}
        try:
            async for result, error in client.stream_infer(requests()):
                now = loop.time()
                if now >= measure_from and "before" not in marks:
                    marks["before"], marks["t"] = cpu_sample(watch), time.perf_counter()
                credits.release()
                if error is not None:
                    errors += now >= measure_from
                else:
                    t0 = sent.pop(result.get_response().id, None)
                    if t0 is not None and now >= measure_from:
                        latencies.append((time.perf_counter() - t0) * 1000)
                if done_sending.is_set() and not sent:
                    break
        except (
            aioclient.InferenceServerException,
            grpc.aio.AioRpcError,
        ) as exc:  # the stream itself broke: what was in flight is lost
            if "before" not in marks:  # broke in the warm-up: the run is all errors, the section goes on
                marks["before"], marks["t"] = cpu_sample(watch), time.perf_counter()
            errors += len(sent)
            marks["broken"] = str(exc)[:200]
        elapsed = time.perf_counter() - marks["t"]
        record = _record(latencies, errors, elapsed, _cpu_delta(marks["before"], cpu_sample(watch)))
        if "broken" in marks:
            record["error_kinds"] = {"stream broken": errors}
        return record
    finally:
        await client.close()


def grpc_section(bench: Any, section: dict[str, Any], runs_of: Callable[..., list[dict[str, Any]]]) -> None:
    """Fill ``section`` with the gRPC cases (direct hub gRPC vs the gateway's gRPC front)."""
    plan = bench.plan
    hub: Hub = bench.hub
    section.update(skipped=[], cases=[])
    if hub.config.grpc_port is None:
        raise StartError("hub", "has no gRPC port", "start it with grpc=True")
    config = {
        "hubs": [{"name": "hub", "url": hub.http_url}],
        "local": {"enabled": False},
        "listen": {"grpc_port": 0},
    }
    link_rows(bench, section, runs_of)
    from bench.scenarios import start_grpc_echo, with_batches

    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(Gateway(bench.workdir, config).start(90))

        def measured(path: str, run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
            """``run(*args)``'s record; the gateway's with the batches it sent meanwhile, as the HTTP rows' have."""
            return with_batches(gateway.url, partial(run, *args)) if path == "gateway" else run(*args)

        echo = stack.enter_context(start_grpc_echo())
        forward = stack.enter_context(start_grpc_echo(hub.http_url))
        assert echo.ready_match is not None and forward.ready_match is not None
        section["gateway_config"] = gateway.config
        hub_watch = Watch("hub", hub.pid, group=True)
        paths = {
            "direct": (f"127.0.0.1:{hub.config.grpc_port}", (hub_watch,)),
            "gateway": (gateway.grpc_address, (hub_watch, Watch("gateway", gateway.pid))),
            GRPC_FLOOR: (f"127.0.0.1:{echo.ready_match.group(1)}", (Watch(GRPC_FLOOR, echo.pid),)),
            GRPC_FORWARD_FLOOR: (
                f"127.0.0.1:{forward.ready_match.group(1)}",
                (hub_watch, Watch(GRPC_FORWARD_FLOOR, forward.pid)),
            ),
        }
        c = plan.overhead_concurrency
        for run in range(plan.runs):
            bench.say(f"grpc run {run + 1}/{plan.runs}")
            for path, (address, watch) in paths.items():
                record = measured(
                    path,
                    sequential,
                    *(address, plan.model, plan.sequential_requests, plan.sequential_warmup, plan.shape, watch),
                )
                runs_of(section, path=path, concurrency=1, client="tritonclient.grpc sync").append(record)
                _say(bench, f"grpc c=1 {path}", record)
            for path, (address, watch) in paths.items():
                record = measured(
                    path,
                    asyncio.run,
                    _concurrent(
                        address, plan.model, c, plan.overhead_duration_s, plan.overhead_warmup_s, plan.shape, watch
                    ),
                )
                runs_of(section, path=path, concurrency=c, client="tritonclient.grpc.aio").append(record)
                _say(bench, f"grpc c={c} {path}", record)
            for path, (address, watch) in paths.items():
                if path == GRPC_FORWARD_FLOOR:  # unary calls only
                    continue
                with contextlib.ExitStack() as own:
                    stream_hub: Hub | None = None
                    if path == "direct":
                        # A hub of its own: the bundled tritonserver (2.51) crashes (SIGSEGV) a few seconds
                        # into a gRPC stream with 64 in flight (2 of 2 runs of 10 s on a fresh hub); the
                        # shared hub serves the gateway's rows and every section after this one.
                        stream_hub = own.enter_context(
                            start_hub(hub.config.repository, "bench-stream", models=(plan.model,), grpc=True)
                        )
                        address = f"127.0.0.1:{stream_hub.config.grpc_port}"
                        watch = (Watch("hub", stream_hub.pid, group=True),)
                    record = measured(
                        path,
                        asyncio.run,
                        _stream(
                            address,
                            plan.model,
                            STREAM_WINDOW,
                            plan.overhead_duration_s,
                            plan.overhead_warmup_s,
                            plan.shape,
                            watch,
                        ),
                    )
                    if stream_hub is not None and stream_hub.child is not None and not stream_hub.child.running:
                        record.setdefault("error_kinds", {})["the hub crashed (tritonserver, not railgate)"] = 1
                client = f"tritonclient.grpc.aio stream_infer, {STREAM_WINDOW} in flight"
                runs_of(section, path=path, concurrency=STREAM_WINDOW, client=client, stream=True).append(record)
                _say(bench, f"grpc stream {path}", record)


def link_rows(bench: Any, section: dict[str, Any], runs_of: Callable[..., list[dict[str, Any]]]) -> None:
    """The batching rows over gRPC: ``batching_concurrency`` tritonclient.grpc.aio clients behind the
    emulated backbone, straight to the hub's gRPC port over the link, or into the gateway's gRPC front
    (which reaches the hub over its own link, HTTP with binary tensors)."""
    from bench.scenarios import system_cpu_us, with_batches

    plan = bench.plan
    hub: Hub = bench.hub
    assert hub.config.grpc_port is not None
    with contextlib.ExitStack() as stack:
        grpc_link = stack.enter_context(Link(hub.config.grpc_port, plan.link_delay_ms))
        http_link = stack.enter_context(Link(hub.config.http_port, plan.link_delay_ms))
        config = {
            "hubs": [{"name": "hub", "url": http_link.url}],
            "local": {"enabled": False},
            "listen": {"grpc_port": 0},
        }
        gateway = stack.enter_context(Gateway(bench.workdir, config).start(90))
        hub_watch = Watch("hub", hub.pid, group=True)
        paths = {
            "direct": (grpc_link.address, (hub_watch, Watch("link", grpc_link.pid))),
            "gateway": (
                gateway.grpc_address,
                (hub_watch, Watch("link", http_link.pid), Watch("gateway", gateway.pid)),
            ),
        }
        c = plan.batching_concurrency
        for run in range(plan.runs):
            bench.say(f"grpc link run {run + 1}/{plan.runs} ({c} clients, link {plan.link_delay_ms:g} ms each way)")
            for path, (address, watch) in paths.items():
                clients = _concurrent(
                    address, plan.model, c, plan.batching_duration_s, plan.batching_warmup_s, plan.shape, watch
                )
                record = (
                    with_batches(gateway.url, partial(asyncio.run, clients))
                    if path == "gateway"
                    else asyncio.run(clients)
                )
                record["system_cpu_us_per_inference"] = system_cpu_us(record, path)
                runs_of(section, path=path, concurrency=c, link=True).append(record)
                _say(bench, f"grpc link {path}", record)


def _say(bench: Any, what: str, record: dict[str, Any]) -> None:
    errors = f" errors={record['errors']}" if record["errors"] else ""
    bench.say(
        f"  {what:34s} {record['throughput_rps']:8.0f} req/s  p50 {record['p50_ms']:7.2f} ms"
        f"  p99 {record['p99_ms']:7.2f} ms{errors}"
    )
