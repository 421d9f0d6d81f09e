"""``railgate demo``: two real hubs behind backbone links, the gateway, and real traffic through it.

Starts hub west-near (10 ms away, HTTP) and hub west-far (25 ms away, gRPC), each behind
``railgate link``, and the gateway with its local ONNX Runtime backend. Then it classifies a few
real handwritten digits, sends a few hundred concurrent requests in all three encodings (Triton
binary tensors through the unmodified tritonclient, v2 JSON, msgpack) and some with a budget too
tight for the backbone, and prints what served them, the batch sizes and the latencies. The
msgpack traffic asks for the cheapest hub (X-Route-Policy), the rest for the nearest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from devtools.devstack import DevStack, HubPlan, StartError

REQUESTS_PER_ENCODING = 150
CONCURRENCY = 24


def run(args: argparse.Namespace) -> int:
    plans = [
        HubPlan("west-near", delay_ms=10, price_per_1k=0.030, carbon_g_per_kwh=120),
        HubPlan("west-far", delay_ms=25, price_per_1k=0.012, carbon_g_per_kwh=30, protocol="grpc"),
    ]
    print("starting 2 real Triton hubs behind `railgate link` (10 ms and 25 ms each way) and the gateway ...")
    t0 = time.monotonic()
    try:
        stack = DevStack.backbone(args.repository, plans, {"local": {"enabled": True}})
    except StartError as exc:
        print(f"railgate demo: {exc}")
        return 1
    try:
        print(f"stack ready in {time.monotonic() - t0:.1f}s: gateway {stack.gateway_url}")
        asyncio.run(_traffic(stack.gateway_url))
    finally:
        stack.close()
    print("all processes stopped")
    return 0


async def _traffic(url: str) -> None:
    import aiohttp
    import msgpack
    import tritonclient.http.aio as tritonaio
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    client = tritonaio.InferenceServerClient(url.removeprefix("http://"), conn_limit=CONCURRENCY)
    stats: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    try:
        await _show_digits(client, x, y)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def timed(encoding: str, call) -> None:
                async with gate:
                    t = time.perf_counter()
                    served_by, batch = await call()
                    stats[(encoding, served_by)].append(((time.perf_counter() - t) * 1000, batch))

            async def binary(i: int):
                tensor = tritonaio.InferInput("pixels", [1, 64], "FP32")
                tensor.set_data_from_numpy(x[i : i + 1], binary_data=True)
                await client.infer("digits", [tensor])
                return "(not exposed)", 0  # tritonclient does not surface reply headers

            async def post(i: int, encoding: str, budget_ms: float | None = None):
                row = x[i : i + 1]
                tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64]}
                if encoding == "msgpack":
                    body = msgpack.packb({"inputs": [{**tensor, "data": row.tobytes()}]})
                    headers = {"Content-Type": "application/msgpack"}
                else:
                    body = json.dumps({"inputs": [{**tensor, "data": row.ravel().tolist()}]}).encode()
                    headers = {"Content-Type": "application/json"}
                if budget_ms is not None:
                    headers["X-Latency-Budget-Ms"] = str(budget_ms)
                if encoding == "msgpack":  # the edge devices' traffic is not in a hurry: cheapest hub
                    headers["X-Route-Policy"] = "cheapest"
                async with session.post(f"{url}/v2/models/digits/infer", data=body, headers=headers) as reply:
                    await reply.read()
                    if reply.status != 200:
                        return f"error {reply.status}", 0
                    return reply.headers["X-Served-By"], int(reply.headers["X-Batch-Size"])

            calls = []
            for i in range(REQUESTS_PER_ENCODING):
                calls.append(timed("tritonclient binary", lambda i=i: binary(i)))
                calls.append(timed("json", lambda i=i: post(i, "json")))
                calls.append(timed("msgpack, cheapest", lambda i=i: post(i, "msgpack")))
            for i in range(40):  # 15 ms cannot fit a 20 ms round trip: the gateway runs these itself
                calls.append(timed("json, 15 ms budget", lambda i=i: post(i, "json", budget_ms=15)))
            t = time.perf_counter()
            await asyncio.gather(*calls)
            elapsed = time.perf_counter() - t
    finally:
        await client.close()
    total = sum(len(v) for v in stats.values())
    print(f"\n{total} requests from {CONCURRENCY} concurrent clients in {elapsed:.2f}s ({total / elapsed:.0f} req/s)")
    await _print_backend_summary(url)
    print(f"\n{'encoding':20s} {'served by':18s} {'requests':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for (encoding, served_by), rows in sorted(stats.items()):
        ms = np.array([r[0] for r in rows])
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"{encoding:20s} {served_by:18s} {len(rows):8d} {p50:8.2f} {p99:8.2f}")


async def _show_digits(client, x: np.ndarray, y: np.ndarray) -> None:
    import tritonclient.http.aio as tritonaio

    picks = np.random.default_rng(7).choice(len(y), size=6, replace=False)
    tensor = tritonaio.InferInput("pixels", [len(picks), 64], "FP32")
    tensor.set_data_from_numpy(x[picks], binary_data=True)
    result = await client.infer("digits", [tensor])
    labels = result.as_numpy("label")[:, 0]
    confidence = result.as_numpy("probabilities").max(axis=1)
    print("\nreal handwritten digits, classified through the gateway (tritonclient, binary tensors):")
    for i, truth, label, p in zip(picks, y[picks], labels, confidence, strict=True):
        print(f"  sample {i:4d}: true {truth}  predicted {label}  p={p:.3f}  {'ok' if label == truth else 'MISS'}")


async def _print_backend_summary(url: str) -> None:
    """Per backend: batches, requests and batch sizes, read from the gateway's own /metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as reply:
        text = await reply.text()
    batches: dict[str, float] = defaultdict(float)
    rows: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "railgate_batch_size_count":
                batches[sample.labels["backend"]] += sample.value
            elif sample.name == "railgate_batch_size_sum":
                rows[sample.labels["backend"]] += sample.value
    print(f"\n{'backend':12s} {'batches':>8s} {'rows':>8s} {'mean batch':>10s}")
    for backend in sorted(batches):
        mean = rows[backend] / batches[backend] if batches[backend] else 0.0
        print(f"{backend:12s} {batches[backend]:8.0f} {rows[backend]:8.0f} {mean:10.2f}")
