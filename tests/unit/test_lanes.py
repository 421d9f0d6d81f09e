"""Lanes come and go with their traffic: a batch key a client can vary (its allowed regions) must
not leave a lane and a task behind for good. The production pipeline over a scripted hub, on
virtual time."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.config import Batching, Limits
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.policy import Policy, Route
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import MODEL, ScriptedBackend, answer, elapse, now, router_over, virtual_time

IDLE_S = 5.0


def request() -> InferRequest:
    return InferRequest("m", "1", [Tensor("x", "FP32", (1, 4), np.zeros((1, 4), np.float32))])


def route(i: int) -> Route:
    return Route(Policy.CHEAPEST, frozenset({"west", f"r{i}"}))


def pipeline_over_one_hub() -> Pipeline:
    hub = ScriptedBackend("west-1", handler=answer(after=0.001))
    return Pipeline(router_over(hub), Batching(idle_lane_s=IDLE_S), Limits(), Metrics())


@virtual_time
async def test_many_distinct_region_sets_leave_no_lane_or_task_once_idle() -> None:
    pipeline = pipeline_over_one_hub()
    for i in range(200):
        await pipeline.submit(request(), MODEL, 1, now() + 1.0, lambda: False, route(i))
    assert len(pipeline.lanes) == 200
    await elapse(IDLE_S + 1.0)
    assert (pipeline.lanes, pipeline._lane_index) == ({}, {})
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await pipeline.close()


@virtual_time
async def test_a_lane_with_a_batch_in_flight_is_not_evicted() -> None:
    hub = ScriptedBackend("west-1", answer(after=3 * IDLE_S))
    pipeline = Pipeline(router_over(hub), Batching(idle_lane_s=IDLE_S), Limits(), Metrics())
    answered = asyncio.create_task(pipeline.submit(request(), MODEL, 1, now() + 60.0, lambda: False, route(0)))
    await elapse(2 * IDLE_S)
    assert len(pipeline.lanes) == 1
    assert (await answered).backend == "west-1"
    await pipeline.close()


@virtual_time
async def test_a_request_for_an_evicted_lane_s_key_is_answered() -> None:
    pipeline = pipeline_over_one_hub()
    await pipeline.submit(request(), MODEL, 1, now() + 1.0, lambda: False, route(0))
    await elapse(IDLE_S + 1.0)
    result = await pipeline.submit(request(), MODEL, 1, now() + 1.0, lambda: False, route(0))
    assert result.backend == "west-1" and len(pipeline.lanes) == 1
    await pipeline.close()


@virtual_time
async def test_a_lane_in_use_keeps_its_runner_and_goes_idle_s_after_its_last_batch() -> None:
    """Requests sent straight from their call (nothing queued) never wake the runner: it must still
    count them as use, and the lane go only ``idle_lane_s`` after the last one ended."""
    pipeline = pipeline_over_one_hub()
    await pipeline.submit(request(), MODEL, 1, now() + 1.0, lambda: False, route(0))
    (lane,) = pipeline.lanes.values()
    for _ in range(6):  # 6 x 0.6 idle_lane_s: past its first timeout, never idle for a whole one
        await elapse(0.6 * IDLE_S)
        await pipeline.submit(request(), MODEL, 1, now() + 1.0, lambda: False, route(0))
        assert list(pipeline.lanes.values()) == [lane] and not lane.runner.done()
    await elapse(0.9 * IDLE_S)
    assert list(pipeline.lanes.values()) == [lane]
    await elapse(0.2 * IDLE_S)
    assert pipeline.lanes == {} and lane.runner.done()
    await pipeline.close()
