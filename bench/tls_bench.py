"""The TLS rows of ``make bench``: what HTTPS and gRPC over TLS add to the gateway's p50, at c=1 and c=16.

Two gateways in front of the same hub (HTTP, binary tensors), identical but for ``listen.tls``
(certificates made for the run, ``devtools.certs``): the same client code measures both, so the
difference is the TLS on the client's hop alone. HTTP: an aiohttp closed loop with binary tensors
(one keep-alive connection per worker: the handshake is paid once, as a pooled client pays it);
gRPC: tritonclient.grpc.aio, a secure channel or an insecure one. ``concurrency`` workers each send
the next request when the last is answered; paths interleaved per run, so drift on a shared machine
spreads over both; added = tls minus plain, paired run by run.
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


async def _closed_loop(call: Call, concurrency: int, duration_s: float, warmup_s: float, watch) -> dict[str, Any]:
    """``concurrency`` workers calling ``call`` back to back; latencies after the warm-up."""
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
                await call()
            except Exception:  # any failed call is an error of the run, counted
                errors += now >= measure_from
                await asyncio.sleep(0.01)  # a failing path must not spin the loop
                continue
            if now >= measure_from:
                latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - marks["t"]
    return _record(latencies, errors, elapsed, _cpu_delta(marks["before"], cpu_sample(watch)))


def _binary_body(model_input: str, shape: tuple[int, ...]) -> tuple[bytes, dict[str, str]]:
    data = np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32).tobytes()
    header = {
        "inputs": [{"name": model_input, "datatype": "FP32", "shape": list(shape),
                    "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    head = json.dumps(header).encode()
    return head + data, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


async def _http(url: str, context: ssl.SSLContext | None, model: str, shape, c: int, plan, watch) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=c, ssl=context if context is not None else False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}/v2/models/{model}") as reply:
            name = (await reply.json())["inputs"][0]["name"]
        body, headers = _binary_body(name, shape)
        infer_url = f"{url}/v2/models/{model}/infer"

        async def call() -> None:
            async with session.post(infer_url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"answered {reply.status}")

        return await _closed_loop(call, c, plan.overhead_duration_s, plan.overhead_warmup_s, watch)


async def _grpc(address: str, roots: bytes | None, model: str, shape, c: int, plan, watch) -> dict[str, Any]:
    import grpc
    import tritonclient.grpc.aio as aioclient

    creds = grpc.ssl_channel_credentials(root_certificates=roots) if roots is not None else None
    client = aioclient.InferenceServerClient(address, creds=creds)
    try:
        name = (await client.get_model_metadata(model)).inputs[0].name
        tensor = aioclient.InferInput(name, list(shape), "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32))

        async def call() -> None:
            await client.infer(model, [tensor])

        return await _closed_loop(call, c, plan.overhead_duration_s, plan.overhead_warmup_s, watch)
    finally:
        await client.close()


def tls_section(bench: Any, section: dict[str, Any], runs_of: Callable[..., list[dict[str, Any]]]) -> None:
    """Fill ``section`` with plain vs TLS cases, for HTTP and gRPC, at c=1 and c=overhead_concurrency."""
    plan = bench.plan
    section.update(skipped=[], cases=[])
    certs = issue_certs(bench.workdir / "tls-certs")
    base = {"hubs": [{"name": "hub", "url": bench.hub.http_url}], "local": {"enabled": False}}
    tls = {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key)}
    context = ssl.create_default_context(cafile=str(certs.ca))
    roots = certs.ca.read_bytes()
    with contextlib.ExitStack() as stack:
        gateways = {}
        for path, listen in (("plain", {"grpc_port": 0}), ("tls", {"grpc_port": 0, "tls": tls})):
            gateway = stack.enter_context(Gateway(bench.workdir, {**base, "listen": listen}).start(90))
            if plan.model not in gateway.models:
                raise StartError(gateway.child.name, f"does not serve {plan.model!r}", ",".join(gateway.models))
            gateways[path] = gateway
        section["gateway_config"] = {path: g.config for path, g in gateways.items()}
        hub_watch = Watch("hub", bench.hub.pid, group=True)
        for run in range(plan.runs):
            bench.say(f"tls run {run + 1}/{plan.runs}")
            for c in (1, plan.overhead_concurrency):
                for protocol in ("http", "grpc"):
                    for path, gateway in gateways.items():
                        watch = (hub_watch, Watch("gateway", gateway.pid))
                        secure = path == "tls"
                        if protocol == "http":
                            url = f"https://127.0.0.1:{gateway.port}" if secure else gateway.url
                            coro = _http(url, context if secure else None, plan.model, plan.shape, c, plan, watch)
                            client = "aiohttp closed loop, binary tensors, keep-alive"
                        else:
                            address = gateway.grpc_address  # 127.0.0.1: the certificate names it too
                            coro = _grpc(address, roots if secure else None, plan.model, plan.shape, c, plan, watch)
                            client = "tritonclient.grpc.aio closed loop"
                        record = asyncio.run(coro)
                        runs_of(section, protocol=protocol, path=path, concurrency=c, client=client).append(record)
                        errors = f" errors={record['errors']}" if record["errors"] else ""
                        bench.say(
                            f"  {protocol} c={c} {path:5s} {record['throughput_rps']:8.0f} req/s"
                            f"  p50 {record['p50_ms']:7.2f} ms  p99 {record['p99_ms']:7.2f} ms{errors}"
                        )
