"""The inference service without a server: admission order, tenancy, billing and metrics, in virtual time.

Every front calls this one service, so what these tests pin is what every protocol answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import numpy as np
import pytest

from gateway.call import Call
from gateway.config import Admission, Batching, Deadlines, Health, Limits, Routing, TenantSpec
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router
from gateway.service import InferenceService
from gateway.tenants import Tenants, hash_key
from railcore.errors import (
    BadRequest,
    DeadlineExceeded,
    Draining,
    Forbidden,
    HubError,
    ModelNotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RailgateError,
    Unauthorized,
)
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import MODEL, ScriptedBackend, answer, hub_failed, now, virtual_time

ACME, WEST = "rg_acme_key", "rg_west_key"
TENANTS = (
    TenantSpec("acme", keys=(hash_key(ACME),), models=("m",), priority="low"),
    TenantSpec("west", keys=(hash_key(WEST),), regions=("west",), daily_quota=2),
)


def service_over(*hubs: ScriptedBackend, tenants: tuple[TenantSpec, ...] = (), limits: Limits | None = None):
    """The production service, pipeline and router over scripted hubs, on the running loop's clock."""
    limits = limits or Limits(max_body_bytes=1000)
    router = Router(list(hubs), Routing(), Health(slow_start_s=0.0), rng=random.Random(0), clock=now)
    router.rebuild_catalog()
    metrics = Metrics()
    pipeline = Pipeline(router, Batching(), limits, metrics, Routing(), Admission())
    return InferenceService(
        router, pipeline, Tenants(tenants), metrics, limits=limits, deadlines=Deadlines(), default_policy="nearest"
    )


def request(rows: int = 1, **parameters) -> InferRequest:
    return InferRequest(
        "m", "", [Tensor("x", "FP32", (rows, 4), np.ones((rows, 4), np.float32))], parameters=parameters
    )


def call(**metadata) -> Call:
    return Call(now(), **metadata)


def bearer(key: str) -> str:
    return f"Bearer {key}"


def requests_counted(service: InferenceService) -> dict[tuple[str, ...], float]:
    samples = service.metrics.requests.collect()[0].samples
    return {tuple(s.labels.values()): s.value for s in samples if s.name.endswith("_total")}


@virtual_time
async def test_a_call_is_answered_with_the_headers_that_describe_it():
    hub = ScriptedBackend("west-1", answer(after=0.004))
    service = service_over(hub)
    served = await service.infer(service.admit(call(), "m", ""), request(rows=2))
    assert (served.response.model_name, served.response.model_version) == ("m", "1")
    assert [(t.name, t.shape) for t in served.response.outputs] == [("y", (2, 1))]
    assert served.headers["X-Served-By"] == "west-1"
    assert served.headers["X-Batch-Size"] == "2"
    assert served.headers["X-Backend-Ms"] == "4.000"
    assert set(served.headers) == {"X-Served-By", "X-Batch-Size", "X-Route-Reason", "X-Queue-Ms", "X-Backend-Ms"}
    assert requests_counted(service) == {("m", "200", "west-1"): 1.0}


@virtual_time
async def test_answer_admits_and_infers_a_request_that_arrives_whole():
    service = service_over(ScriptedBackend("west-1", answer()))
    served = await service.answer(call(), request())
    assert served.headers["X-Served-By"] == "west-1"


@virtual_time
async def test_a_draining_service_refuses_before_anything_else_with_retry_after():
    service = service_over(ScriptedBackend("west-1"), tenants=TENANTS)
    service.refusing = True
    with pytest.raises(Draining, match="shutting down") as refused:
        service.admit(call(policy="bogus"), "nowhere", "")
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(
    ("metadata", "model", "error"),
    [
        # The key comes first: a caller without one learns nothing about its headers or the models.
        ({"policy": "bogus", "body_bytes": 10**6}, "nowhere", Unauthorized),
        ({"authorization": bearer(ACME), "policy": "bogus", "body_bytes": 10**6}, "nowhere", PayloadTooLarge),
        ({"authorization": bearer(ACME), "policy": "bogus"}, "nowhere", ModelNotFound),
        ({"authorization": bearer(WEST), "policy": "bogus", "regions": "east"}, "m", BadRequest),
        ({"authorization": bearer(WEST), "regions": "east", "priority": "urgent"}, "m", Forbidden),
        ({"authorization": bearer(WEST), "priority": "urgent"}, "m", BadRequest),
    ],
)
@virtual_time
async def test_admission_refuses_with_the_first_check_that_fails(metadata, model, error):
    service = service_over(ScriptedBackend("west-1"), tenants=TENANTS)
    with pytest.raises(RailgateError) as refused:
        service.admit(call(**metadata), model, "")
    assert type(refused.value) is error, refused.value.message


@virtual_time
async def test_an_unknown_version_is_404_before_the_body_is_read():
    service = service_over(ScriptedBackend("west-1"))
    with pytest.raises(ModelNotFound):
        service.admit(call(), "m", "7")


@virtual_time
async def test_a_tenant_may_use_only_its_models():
    other = dataclasses.replace(MODEL, name="other")
    service = service_over(ScriptedBackend("west-1"), ScriptedBackend("west-2", model=other), tenants=TENANTS)
    with pytest.raises(Forbidden, match="tenant 'acme' may not use model 'other'; allowed: m"):
        service.admit(call(authorization=bearer(ACME)), "other", "")


@virtual_time
async def test_residency_narrows_a_route_and_never_widens_it():
    service = service_over(ScriptedBackend("west-1"), tenants=TENANTS)
    assert service.admit(call(authorization=bearer(WEST)), "m", "").route.regions == frozenset({"west"})
    with pytest.raises(Forbidden, match=r"tenant 'west' may not use region\(s\) east; its residency is \['west'\]"):
        service.admit(call(authorization=bearer(WEST), regions="west,east"), "m", "")
    anonymous = service_over(ScriptedBackend("west-1"), ScriptedBackend("east-1", region="east"))
    assert anonymous.admit(call(regions="east"), "m", "").route.regions == frozenset({"east"})


@virtual_time
async def test_priority_and_policy_default_to_the_tenant_s_and_the_config_s():
    service = service_over(ScriptedBackend("west-1"), tenants=TENANTS)
    ticket = service.admit(call(authorization=bearer(ACME)), "m", "")
    assert (ticket.priority, ticket.route.policy) == ("low", "nearest")
    ticket = service.admit(call(authorization=bearer(ACME), priority="HIGH", policy="cheapest"), "m", "")
    assert (ticket.priority, ticket.route.policy) == ("high", "cheapest")


@virtual_time
async def test_a_budget_spent_on_arrival_is_504_and_never_reaches_a_hub():
    hub = ScriptedBackend("west-1")
    service = service_over(hub)
    ticket = service.admit(call(budget_ms="0"), "m", "")
    with pytest.raises(DeadlineExceeded, match="already spent on arrival"):
        await service.infer(ticket, request())
    assert hub.calls == []


@virtual_time
@pytest.mark.parametrize("metadata", [{"budget_ms": "0"}, {"transport_budget_s": 0.0}])
async def test_a_spent_budget_is_refused_even_when_arrival_reads_ahead_of_the_loop_clock(metadata):
    """``call.arrival`` reads the monotonic clock, which may be up to a uvloop step (1 ms) ahead of
    the loop's: a budget of 0 (a gRPC deadline already past) is still refused, never sent."""
    hub = ScriptedBackend("west-1", answer())
    service = service_over(hub)
    ticket = service.admit(Call(now() + 0.0008, **metadata), "m", "")
    with pytest.raises(DeadlineExceeded, match="already spent on arrival"):
        await service.infer(ticket, request())
    assert hub.calls == []


@virtual_time
async def test_the_budget_counts_from_arrival_not_from_the_end_of_the_body():
    hub = ScriptedBackend("west-1", answer())
    service = service_over(hub)
    ticket = service.admit(call(budget_ms="100"), "m", "")
    await asyncio.sleep(0.06)  # virtual time: the body takes 60 ms to arrive
    await service.infer(ticket, request())
    assert hub.calls[0].deadline == pytest.approx(ticket.call.arrived + 0.1)


@virtual_time
async def test_an_invalid_request_is_400_and_never_reaches_a_hub():
    hub = ScriptedBackend("west-1")
    service = service_over(hub)
    bad = InferRequest("m", "", [Tensor("x", "FP32", (1, 3), np.ones((1, 3), np.float32))])
    with pytest.raises(BadRequest, match="shape"):
        await service.infer(service.admit(call(), "m", ""), bad)
    assert hub.calls == []


@virtual_time
async def test_usage_is_billed_to_the_tenant_at_the_serving_hub_s_price():
    service = service_over(ScriptedBackend("west-1", answer(), answer()), tenants=TENANTS)
    for rows in (1, 1):
        await service.infer(service.admit(call(authorization=bearer(WEST)), "m", ""), request(rows=rows))
    usage = service.tenants.usage(only="west")["west"]
    assert (usage["requests"], usage["inferences"], usage["spend"]) == (2, 2, 0.002)  # price 1.0 per 1,000
    with pytest.raises(QuotaExceeded, match="daily quota of 2"):
        await service.infer(service.admit(call(authorization=bearer(WEST)), "m", ""), request())


def test_a_failure_is_counted_by_status_and_the_backend_that_failed():
    service = service_over(ScriptedBackend("west-1"))
    service.record_failure("m", DeadlineExceeded("late", headers={"X-Served-By": "west-1"}))
    service.record_failure("m", BadRequest("bad"))
    assert requests_counted(service) == {("m", "504", "west-1"): 1.0, ("m", "400", "none"): 1.0}


def test_unknown_model_names_add_no_metric_series():
    """A label never takes a value a client chose: 300 made-up names are counted under one label."""
    service = service_over(ScriptedBackend("west-1"))
    service.record_failure("m", ModelNotFound("first"))
    before = len(requests_counted(service))
    for i in range(300):
        service.record_failure(f"made-up-{i}", ModelNotFound(f"no model made-up-{i}"))
    counted = requests_counted(service)
    assert len(counted) == before + 1, sorted(counted)[:5]
    assert counted[("(unknown)", "404", "none")] == 300.0
    assert not any(labels[0].startswith("made-up") for labels in counted)


@virtual_time
async def test_a_failed_request_does_not_consume_the_daily_quota():
    """The quota charges what was answered: west's quota of 2 survives a hub error and serves 2."""
    hub = ScriptedBackend("west-1", hub_failed(), answer(), answer())
    service = service_over(hub, tenants=TENANTS)
    with pytest.raises(HubError):
        await service.infer(service.admit(call(authorization=bearer(WEST)), "m", ""), request())
    for _ in range(2):
        await service.infer(service.admit(call(authorization=bearer(WEST)), "m", ""), request())
    usage = service.tenants.usage(only="west")["west"]
    assert (usage["requests"], usage["inferences"], usage["inferences_today"]) == (2, 2, 2)
    with pytest.raises(QuotaExceeded, match="daily quota of 2"):
        await service.infer(service.admit(call(authorization=bearer(WEST)), "m", ""), request())
