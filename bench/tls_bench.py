"""The TLS rows of ``make bench``: what HTTPS and gRPC over TLS add to the gateway's p50, at c=1 and c=16.

Two gateways in front of the same hub (HTTP, binary tensors), identical but for ``listen.tls``
(certificates made for the run, ``devtools.certs``): the same client code measures both, so the
difference is the TLS on the client's hop alone. HTTP: aiohttp with binary tensors, one keep-alive
connection per worker (the handshake is paid once, as a pooled client pays it); gRPC:
tritonclient.grpc.aio over a secure or an insecure channel. ``concurrency`` workers send the next
request when the last is answered.

On a shared machine the load of other processes drifts by more than TLS costs, so the two paths
are interleaved finely: their clients stay connected and take turns in slices of ``SLICE_S``
(plain, TLS, plain, ...) for the whole measured window, each path's latencies gathered over its
slices. A run is one such window per protocol and concurrency; added = TLS minus plain, paired run
by run, median [min, max] over runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from bench.grpc_bench import _cpu_delta, _record
from bench.load import Watch, cpu_sample
from devtools.certs import issue_certs
from devtools.devstack import Gateway, StartError
from railcore.protocol.codec import HEADER_LENGTH

Call = Callable[[], Awaitable[None]]
SLICE_S = 0.25  # each path's turn; short against the machine's drift, long against a slice's ramp-up


async def _slice(call: Call, concurrency: int, seconds: float, latencies: list[float]) -> int:
    """``concurrency`` workers calling ``call`` back to back for ``seconds``; latencies appended, errors returned."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while loop.time() < stop_at:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:  # any failed call is an error of the run, counted
                errors += 1
                await asyncio.sleep(0.01)  # a failing path must not spin the loop
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def _interleaved(
    calls: dict[str, Call], watches: dict[str, tuple[Watch, ...]], concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, dict[str, Any]]:
    """Each path's record, the paths taking turns in ``SLICE_S`` slices for ``duration_s`` each."""
    for call in calls.values():  # warm-up: connections opened, caches filled (not recorded)
        await _slice(call, concurrency, warmup_s, [])
    latencies: dict[str, list[float]] = {path: [] for path in calls}
    errors = dict.fromkeys(calls, 0)
    elapsed = dict.fromkeys(calls, 0.0)
    cpu: dict[str, dict[str, float]] = {path: {} for path in calls}
    for _ in range(max(1, round(duration_s / SLICE_S))):
        for path, call in calls.items():
            before, t0 = cpu_sample(watches[path]), time.perf_counter()
            errors[path] += await _slice(call, concurrency, SLICE_S, latencies[path])
            elapsed[path] += time.perf_counter() - t0
            for name, value in _cpu_delta(before, cpu_sample(watches[path])).items():
                cpu[path][name] = cpu[path].get(name, 0.0) + value
    return {path: _record(latencies[path], errors[path], elapsed[path], cpu[path]) for path in calls}


def _binary_body(model_input: str, shape: tuple[int, ...]) -> tuple[bytes, dict[str, str]]:
    data = np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32).tobytes()
    header = {
        "inputs": [{"name": model_input, "datatype": "FP32", "shape": list(shape),
                    "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    head = json.dumps(header).encode()
    return head + data, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


async def _http_call(
    stack: contextlib.AsyncExitStack, url: str, context: ssl.SSLContext | None, model: str, shape, c: int
) -> Call:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=c, ssl=context if context is not None else False)
    session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
    async with session.get(f"{url}/v2/models/{model}") as reply:
        name = (await reply.json())["inputs"][0]["name"]
    body, headers = _binary_body(name, shape)
    infer_url = f"{url}/v2/models/{model}/infer"

    async def call() -> None:
        async with session.post(infer_url, data=body, headers=headers) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"answered {reply.status}")

    return call


async def _grpc_call(stack: contextlib.AsyncExitStack, address: str, roots: bytes | None, model: str, shape) -> Call:
    import grpc
    import tritonclient.grpc.aio as aioclient

    creds = grpc.ssl_channel_credentials(root_certificates=roots) if roots is not None else None
    client = aioclient.InferenceServerClient(address, creds=creds)
    stack.push_async_callback(client.close)
    name = (await client.get_model_metadata(model)).inputs[0].name
    tensor = aioclient.InferInput(name, list(shape), "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32))

    async def call() -> None:
        await client.infer(model, [tensor])

    return call


CLIENTS = {
    "http": "aiohttp, binary tensors, keep-alive",
    "grpc": "tritonclient.grpc.aio",
}


async def _measure(
    protocol: str, c: int, gateways: dict[str, Gateway], certs: Any, plan: Any, watches
) -> dict[str, dict[str, Any]]:
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, Call] = {}
        for path, gateway in gateways.items():
            secure = path == "tls"
            if protocol == "http":
                url = f"https://127.0.0.1:{gateway.port}" if secure else gateway.url
                context = ssl.create_default_context(cafile=str(certs.ca)) if secure else None
                calls[path] = await _http_call(stack, url, context, plan.model, plan.shape, c)
            else:  # 127.0.0.1: the certificate names it too
                roots = certs.ca.read_bytes() if secure else None
                calls[path] = await _grpc_call(stack, gateway.grpc_address, roots, plan.model, plan.shape)
        return await _interleaved(calls, watches, c, plan.overhead_duration_s, plan.overhead_warmup_s)


def tls_section(bench: Any, section: dict[str, Any], runs_of: Callable[..., list[dict[str, Any]]]) -> None:
    """Fill ``section`` with plain vs TLS cases, for HTTP and gRPC, at c=1 and c=overhead_concurrency."""
    plan = bench.plan
    section.update(skipped=[], cases=[], slice_s=SLICE_S)
    certs = issue_certs(bench.workdir / "tls-certs")
    base = {"hubs": [{"name": "hub", "url": bench.hub.http_url}], "local": {"enabled": False}}
    tls = {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key)}
    with contextlib.ExitStack() as stack:
        gateways = {}
        for path, listen in (("plain", {"grpc_port": 0}), ("tls", {"grpc_port": 0, "tls": tls})):
            gateway = stack.enter_context(Gateway(bench.workdir, {**base, "listen": listen}).start(90))
            if plan.model not in gateway.models:
                raise StartError(gateway.child.name, f"does not serve {plan.model!r}", ",".join(gateway.models))
            gateways[path] = gateway
        section["gateway_config"] = {path: g.config for path, g in gateways.items()}
        hub_watch = Watch("hub", bench.hub.pid, group=True)
        watches = {path: (hub_watch, Watch("gateway", g.pid)) for path, g in gateways.items()}
        for run in range(plan.runs):
            bench.say(f"tls run {run + 1}/{plan.runs}")
            for c in (1, plan.overhead_concurrency):
                for protocol in ("http", "grpc"):
                    records = asyncio.run(_measure(protocol, c, gateways, certs, plan, watches))
                    for path, record in records.items():
                        case = {"protocol": protocol, "path": path, "concurrency": c, "client": CLIENTS[protocol]}
                        runs_of(section, **case).append(record)
                        errors = f" errors={record['errors']}" if record["errors"] else ""
                        bench.say(
                            f"  {protocol} c={c} {path:5s} {record['throughput_rps']:8.0f} req/s"
                            f"  p50 {record['p50_ms']:7.2f} ms  p99 {record['p99_ms']:7.2f} ms{errors}"
                        )
