"""Residency: a call's allowed regions (X-Allowed-Regions) name regions this gateway has, and a
backend outside them, the gateway's own local one included, never runs the call. The production
service and router over scripted backends, on virtual time."""

from __future__ import annotations

import random
from typing import ClassVar

import numpy as np
import pytest

from gateway.backends import BackendKind
from gateway.call import Call
from gateway.config import Admission, Batching, Deadlines, Health, Limits, Routing
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router
from gateway.service import InferenceService
from gateway.tenants import Tenants
from railcore.errors import BadRequest, NoBackend
from railcore.protocol.types import InferRequest, Tensor
from tests.fakes import ScriptedBackend, answer, now, virtual_time


class ScriptedLocal(ScriptedBackend):
    """The gateway's own backend, scripted: a backend of kind LOCAL in its own region."""

    kind: ClassVar[BackendKind] = BackendKind.LOCAL


def service_over(*backends: ScriptedBackend) -> InferenceService:
    router = Router(list(backends), Routing(), Health(slow_start_s=0.0), rng=random.Random(0), clock=now)
    router.rebuild_catalog()
    metrics, limits = Metrics(), Limits()
    pipeline = Pipeline(router, Batching(), limits, metrics, Routing(), Admission())
    return InferenceService(
        router, pipeline, Tenants(()), metrics, limits=limits, deadlines=Deadlines(), default_policy="nearest"
    )


def request() -> InferRequest:
    return InferRequest("m", "", [Tensor("x", "FP32", (1, 4), np.ones((1, 4), np.float32))])


@virtual_time
async def test_a_region_no_backend_has_is_400_naming_the_known_regions() -> None:
    service = service_over(ScriptedBackend("west-1", region="west"), ScriptedLocal("local", region="edge-3"))
    with pytest.raises(BadRequest, match=r"unknown region\(s\) mars; this gateway's regions are edge-3, west"):
        service.admit(Call(now(), regions="west,mars"), "m", "")


@virtual_time
async def test_a_known_region_is_admitted() -> None:
    service = service_over(ScriptedBackend("west-1", region="west"), ScriptedLocal("local", region="edge-3"))
    assert service.admit(Call(now(), regions="edge-3"), "m", "").route.regions == frozenset({"edge-3"})


@virtual_time
async def test_with_every_allowed_hub_down_a_call_never_runs_locally_outside_its_regions() -> None:
    west = ScriptedBackend("west-1", region="west")
    east = ScriptedBackend("east-1", region="east")
    local = ScriptedLocal("local", handler=answer(), region="edge-3")
    service = service_over(west, east, local)
    west.healthy = east.healthy = False
    ticket = service.admit(Call(now(), regions="west,east"), "m", "")
    with pytest.raises(NoBackend, match=r"no healthy backend in the allowed regions \[east, west\]") as refused:
        await service.infer(ticket, request())
    assert refused.value.status == 503
    assert local.calls == []


@virtual_time
async def test_a_call_that_allows_the_local_region_runs_locally_when_its_hubs_are_down() -> None:
    west = ScriptedBackend("west-1", region="west")
    local = ScriptedLocal("local", handler=answer(), region="edge-3")
    service = service_over(west, local)
    west.healthy = False
    served = await service.infer(service.admit(Call(now(), regions="west,edge-3"), "m", ""), request())
    assert served.headers["X-Served-By"] == "local"
