"""Durations are measured on a high-resolution monotonic clock, not on the event loop's.

Under uvloop ``loop.time()`` moves in 1 ms steps, so a duration taken on it is a whole number of
milliseconds (mostly 0.000 or 1.000). These run the production service on a real uvloop loop over a
scripted hub that answers at once, and look at the timings many requests report."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import uvloop

from gateway.call import Call
from gateway.config import Admission, Batching, Deadlines, Health, Limits, Routing
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router
from gateway.service import InferenceService
from gateway.tenants import Tenants
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import ScriptedBackend, answer

REQUESTS = 50


def whole_milliseconds(values: list[float]) -> bool:
    return all(abs(v * 1000 - round(v * 1000)) < 1e-6 for v in values)


async def timings() -> tuple[list[float], list[float], float]:
    """X-Backend-Ms and X-Queue-Ms (as seconds) of ``REQUESTS`` calls, and the latency histogram's sum."""
    router = Router([ScriptedBackend("west-1", handler=answer())], Routing(), Health(slow_start_s=0.0),
                    rng=random.Random(0))  # fmt: skip
    router.rebuild_catalog()
    metrics, limits = Metrics(), Limits()
    pipeline = Pipeline(router, Batching(), limits, metrics, Routing(), Admission())
    service = InferenceService(
        router, pipeline, Tenants(()), metrics, limits=limits, deadlines=Deadlines(), default_policy="nearest"
    )
    request = InferRequest("m", "", [Tensor("x", "FP32", (1, 4), np.ones((1, 4), np.float32))])
    backend, queue = [], []
    for _ in range(REQUESTS):
        ticket = service.admit(Call(asyncio.get_running_loop().time()), "m", "")
        headers = (await service.infer(ticket, request)).headers
        backend.append(float(headers["X-Backend-Ms"]) / 1000)
        queue.append(float(headers["X-Queue-Ms"]) / 1000)
    await pipeline.close()
    latency = next(s.value for s in metrics.latency.collect()[0].samples if s.name.endswith("_sum"))
    return backend, queue, latency


def run_on_uvloop() -> tuple[list[float], list[float], float]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(timings())


def test_x_backend_ms_is_not_whole_milliseconds_under_uvloop() -> None:
    backend, _, _ = run_on_uvloop()
    assert not whole_milliseconds(backend), backend[:5]


def test_x_queue_ms_is_not_whole_milliseconds_under_uvloop() -> None:
    _, queue, _ = run_on_uvloop()
    assert not whole_milliseconds(queue), queue[:5]


def test_the_end_to_end_latency_is_not_whole_milliseconds_under_uvloop() -> None:
    _, _, latency = run_on_uvloop()
    assert not whole_milliseconds([latency]), latency
