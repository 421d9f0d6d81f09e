"""The pipeline's dispatch through the forwarder: a request, not a batch, over scripted hubs
(tests/fakes.py), on virtual time."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import Batching, Limits, Routing
from gateway.metrics import Metrics
from gateway.pipeline import BatchResult, Pipeline
from railcore.errors import HubFailed
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
