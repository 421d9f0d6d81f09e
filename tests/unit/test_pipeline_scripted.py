"""The pipeline's dispatch through the forwarder: a request, not a batch, over scripted hubs
(tests/fakes.py), on virtual time."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.config import Batching, Limits, Routing
from gateway.lanes import BatchResult
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from railcore.breaker import BreakerState
from railcore.errors import HubFailed, HubModelFailed
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import CHEAPEST, MODEL, ScriptedBackend, answer, hub_failed, now, router_over, virtual_time


async def submit_one(pipeline: Pipeline) -> BatchResult:
    request = InferRequest("m", "1", [Tensor("x", "FP32", (2, 4), np.zeros((2, 4), np.float32))])
    try:
        return await pipeline.submit(request, MODEL, 2, now() + 1.0, lambda: False, CHEAPEST)
    finally:
        await pipeline.close()


@virtual_time
async def test_a_request_whose_hub_fails_is_answered_by_the_next_best_hub() -> None:
    cheap, mid = ScriptedBackend("cheap", hub_failed()), ScriptedBackend("mid", answer(after=0.005), price=2.0)
    pipeline = Pipeline(router_over(cheap, mid), Batching(), Limits(), Metrics())
    result = await submit_one(pipeline)
    assert (result.backend, result.route_reason.split(":")[0]) == ("mid", "failover")
    assert result.outputs["y"].shape == (2, 1) and result.backend_s == pytest.approx(0.005)


@virtual_time
async def test_the_retry_budget_is_a_share_of_the_requests_in_progress() -> None:
    """No floor: with one request in progress, a ratio of 1.0 allows its one retry."""
    routing = Routing(retry_ratio=1.0, min_retry_concurrency=0)
    cheap, mid = ScriptedBackend("cheap", hub_failed()), ScriptedBackend("mid", answer(), price=2.0)
    assert (
        await submit_one(Pipeline(router_over(cheap, mid), Batching(), Limits(), Metrics(), routing))
    ).backend == "mid"


@virtual_time
async def test_with_no_retry_budget_a_request_whose_hub_fails_gets_the_hubs_error() -> None:
    routing = Routing(retry_ratio=0.0, min_retry_concurrency=0)
    cheap, mid = ScriptedBackend("cheap", hub_failed()), ScriptedBackend("mid", answer(), price=2.0)
    with pytest.raises(HubFailed, match="scripted"):
        await submit_one(Pipeline(router_over(cheap, mid), Batching(), Limits(), Metrics(), routing))
    assert mid.calls == []


class ParsingHub(ScriptedBackend):
    """A fake hub whose model fails on a NaN, as a model that parses its strings fails on ``""``:
    Triton answers 500 with the model's error, which the client turns into ``HubModelFailed``."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__("parse", handler=self._model)
        self.gate = gate
        self.seen: list[np.ndarray] = []

    async def infer(self, model, version, inputs, outputs, deadline, timeout_s=None):
        self.seen.append(inputs["x"])
        return await super().infer(model, version, inputs, outputs, deadline, timeout_s)

    async def _model(self, call) -> dict[str, np.ndarray]:
        x = self.seen[len(self.calls) - 1]
        if len(self.calls) == 1:
            await self.gate.wait()  # holds the lane so the next requests queue into one batch
        if np.isnan(x).any():
            raise HubModelFailed("hub parse answered 500: onnxruntime failed: stoll")
        return {"y": x[:, :1].copy()}


def _request(value: float) -> InferRequest:
    return InferRequest("m", "1", [Tensor("x", "FP32", (1, 4), np.full((1, 4), value, np.float32))])


@virtual_time
async def test_one_members_bad_data_fails_only_that_member_and_never_the_hub() -> None:
    gate = asyncio.Event()
    hub = ParsingHub(gate)
    router = router_over(hub)
    pipeline = Pipeline(router, Batching(max_inflight_batches=1), Limits(), Metrics())
    try:
        first = asyncio.ensure_future(pipeline.submit(_request(0.0), MODEL, 1, now() + 1.0, lambda: False, CHEAPEST))
        await hub.started(1)
        calls = [
            asyncio.ensure_future(pipeline.submit(_request(v), MODEL, 1, now() + 1.0, lambda: False, CHEAPEST))
            for v in (1.0, float("nan"), 3.0)
        ]
        await asyncio.sleep(0)
        gate.set()
        await first
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await pipeline.close()
    assert [len(x) for x in hub.seen] == [1, 3, 1, 1, 1], "the failed batch of 3 was split, each member alone"
    assert results[0].outputs["y"].tolist() == [[1.0]] and results[2].outputs["y"].tolist() == [[3.0]]
    assert isinstance(results[1], HubModelFailed) and "stoll" in results[1].message
    breaker = router.breakers["parse"]
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0, "data errors never eject"


@virtual_time
async def test_by_default_requests_arriving_while_a_batch_is_out_wait_the_queue_delay_and_go_together() -> None:
    """Triton's dynamic batcher with one instance: a request finding its lane idle goes at once; those
    arriving while a batch is out gather for ``max_queue_delay_ms`` and go as one batch, without waiting
    for the first to come back (in flight is not capped), rather than each in a hub call of its own."""
    hub = ScriptedBackend("hub", handler=answer(after=0.010))
    pipeline = Pipeline(router_over(hub), Batching(), Limits(), Metrics())
    delay_s = Batching().max_queue_delay_ms / 1000
    try:
        start = now()
        first = asyncio.ensure_future(pipeline.submit(_request(0.0), MODEL, 1, start + 1.0, lambda: False, CHEAPEST))
        await hub.started(1)
        later = []
        for value in (1.0, 2.0, 3.0):  # a gRPC front's arrivals: one at a time, spread out
            await asyncio.sleep(delay_s / 8)
            later.append(
                asyncio.ensure_future(pipeline.submit(_request(value), MODEL, 1, now() + 1.0, lambda: False, CHEAPEST))
            )
        await asyncio.gather(first, *later)
    finally:
        await pipeline.close()
    assert [call.rows for call in hub.calls] == [1, 3]
    sent = [call.started_at - start for call in hub.calls]
    assert sent[0] == pytest.approx(0.0, abs=1e-3)
    # Sent once its oldest member had waited the queue delay, while the first batch was still out.
    assert sent[1] == pytest.approx(delay_s / 8 + delay_s, abs=1.5e-3) and sent[1] < 0.010
