"""The pipeline over a scripted hub (tests/fakes.py), on virtual time: when it is idle, its typed
admission refusals, its lane keys, and the clock its durations are measured on."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest

from gateway.config import Admission, Batching, Health, Limits, Priority
from gateway.lanes import LaneKey
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.policy import Policy, Route
from gateway.routing.router import Router
from railcore.errors import Draining, PredictedMiss, QueueFull, Shedding
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import MODEL, ScriptedBackend, answer, answer_when, now, virtual_time


def pipeline_over(hub: ScriptedBackend, clock=None, admission=None, limits=None, **batching) -> Pipeline:
    router = Router([hub], health=Health(slow_start_s=0.0), rng=random.Random(0), clock=asyncio.get_running_loop().time)
    router.rebuild_catalog()
    return Pipeline(router, Batching(**batching), limits or Limits(), Metrics(), admission=admission, clock=clock)


def request(i: int = 0, rows: int = 1) -> InferRequest:
    return InferRequest("m", "", [Tensor("x", "FP32", (rows, 4), np.zeros((rows, 4), np.float32))], id=f"r{i}")


def submit(pipe: Pipeline, i: int = 0, budget_s: float = 1.0, **kwargs) -> asyncio.Future:
    return asyncio.ensure_future(pipe.submit(request(i), MODEL, 1, now() + budget_s, lambda: False, **kwargs))


async def pending_after(task: asyncio.Future, seconds: float = 0.001) -> bool:
    """Whether ``task`` is still waiting after ``seconds`` of virtual time."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return not done


@virtual_time
async def test_wait_idle_returns_once_no_accepted_request_is_in_progress() -> None:
    release = asyncio.Event()
    hub = ScriptedBackend("hub", answer_when(release))
    pipe = pipeline_over(hub)
    await pipe.wait_idle()  # idle from the start
    served = submit(pipe)
    await hub.started()
    idle = asyncio.ensure_future(pipe.wait_idle())
    assert await pending_after(idle), "a request is in progress"
    release.set()
    await served
    await idle
    assert pipe.active == 0
    await pipe.close()


@virtual_time
async def test_a_backends_wait_idle_returns_once_its_batches_are_back() -> None:
    release = asyncio.Event()
    hub = ScriptedBackend("hub", answer_when(release))
    pipe = pipeline_over(hub)
    served = submit(pipe)
    await hub.started()
    idle = asyncio.ensure_future(hub.wait_idle())
    assert hub.inflight == 1 and await pending_after(idle)
    release.set()
    await idle
    assert hub.inflight == 0
    await served
    await pipe.close()


@virtual_time
async def test_queue_and_backend_time_are_measured_on_the_pipelines_clock_not_the_loops() -> None:
    ticks = itertools.count(step=0.5)  # each reading is 0.5 s after the last: a clock we can count
    hub = ScriptedBackend("hub", answer(after=0.010))
    pipe = pipeline_over(hub, clock=lambda: next(ticks))
    result = await submit(pipe)
    assert (result.queue_s, result.backend_s) == (0.5, 0.5), "one reading apart, whatever the loop's time did"
    await pipe.close()


@virtual_time
async def test_a_full_gateway_sheds_low_priority_with_503_before_high() -> None:
    release = asyncio.Event()
    hub = ScriptedBackend("hub", handler=answer_when(release))
    pipe = pipeline_over(hub, admission=Admission(max_active_requests=2, shed_low_at=0.5, shed_normal_at=1.0))
    first = submit(pipe, 0, priority=Priority.HIGH)
    await hub.started()
    with pytest.raises(Shedding, match="low priority is shed first") as shed:
        await pipe.submit(request(1), MODEL, 1, now() + 1.0, lambda: False, priority=Priority.LOW)
    assert shed.value.status == 503 and shed.value.headers == {"Retry-After": "1"}
    second = submit(pipe, 2, priority="high")  # the header's string is the priority
    release.set()
    await asyncio.gather(first, second)
    await pipe.close()


@virtual_time
async def test_a_full_queue_is_429_and_a_predicted_miss_503() -> None:
    release = asyncio.Event()
    hub = ScriptedBackend("hub", answer(after=0.400), handler=answer_when(release))
    # One batch in flight per lane and room for two rows a batch: the second request waits in the
    # queue. Every budget here is in one budget class, so every request is in one lane.
    pipe = pipeline_over(
        hub, max_inflight_batches=1, max_batch_size=2, max_queue_delay_ms=1000.0, limits=Limits(max_queued_requests=1)
    )
    await submit(pipe, 0)  # measures a 400 ms service time
    busy = submit(pipe, 1)
    await hub.started(2)
    queued = submit(pipe, 2)
    assert await pending_after(queued)
    with pytest.raises(QueueFull) as full:
        await pipe.submit(request(3), MODEL, 1, now() + 1.0, lambda: False)
    assert full.value.status == 429
    pipe.limits = Limits()
    with pytest.raises(PredictedMiss, match="wait 400 ms plus service 400 ms exceeds the budget of 500 ms") as miss:
        await pipe.submit(request(4, rows=2), MODEL, 2, now() + 0.500, lambda: False)
    assert miss.value.status == 503
    release.set()
    await asyncio.gather(busy, queued)
    await pipe.close()


@virtual_time
async def test_a_closing_pipeline_refuses_as_draining() -> None:
    pipe = pipeline_over(ScriptedBackend("hub"))
    await pipe.close()
    with pytest.raises(Draining, match="shutting down") as refused:
        await pipe.submit(request(), MODEL, 1, now() + 1.0, lambda: False)
    assert refused.value.status == 503


@virtual_time
async def test_lanes_are_keyed_by_model_version_route_and_budget_class() -> None:
    pipe = pipeline_over(ScriptedBackend("hub", handler=answer()))
    route = Route(Policy.CHEAPEST)
    await asyncio.gather(submit(pipe, 0, route=route), submit(pipe, 1, budget_s=30.0, route=route))
    assert set(pipe.lanes) == {LaneKey("m", "", route, 3), LaneKey("m", "", route, 5)}
    assert Route("cheapest") == route, "a policy is its header string"
    await pipe.close()
