"""Failover, the deadline across retries and the retry budget: the production forwarder over
scripted hubs (tests/fakes.py), on virtual time. The same paths over real hubs: test_routing_live.py."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from gateway.config import Health, Routing
from gateway.routing.forward import Batch
from gateway.routing.policy import Policy, Route
from railcore.breaker import BreakerState
from railcore.errors import DeadlineExceeded, HubFailed, HubProtocolError, HubRejected, NoBackend
from tests.fakes import (
    CHEAPEST,
    ScriptedBackend,
    Step,
    answer,
    answer_when,
    batch,
    deadline_exceeded,
    fail,
    forwarder_over,
    hub_failed,
    now,
    rejected,
    unreachable,
    virtual_time,
)

# Hubs are ranked by price (the batches route "cheapest"): cheap, then mid, then dear.


@pytest.mark.parametrize(
    "failure",
    [hub_failed(), unreachable(), fail(HubProtocolError), answer({"y": np.zeros((1, 1), np.float32)})],
    ids=["hub_error", "unreachable", "protocol_error", "short_output"],
)
@virtual_time
async def test_a_failed_batch_fails_over_to_the_next_best_hub(failure: Step) -> None:
    cheap = ScriptedBackend("cheap", failure)
    mid = ScriptedBackend("mid", answer(), price=2.0)
    dear = ScriptedBackend("dear", price=3.0)
    forwarded = await forwarder_over(cheap, mid, dear).forward(batch())
    assert (forwarded.backend, len(cheap.calls), len(mid.calls), dear.calls) == ("mid", 1, 1, [])
    assert forwarded.reason.startswith("failover:")
    assert forwarded.outputs["y"].shape == (2, 1)


@virtual_time
async def test_failover_skips_a_hub_outside_the_allowed_regions() -> None:
    cheap = ScriptedBackend("cheap", hub_failed(), region="west")
    east = ScriptedBackend("east", answer(), region="east", price=2.0)
    dear = ScriptedBackend("dear", answer(), region="west", price=3.0)
    forwarded = await forwarder_over(cheap, east, dear).forward(
        batch(route=Route(Policy.CHEAPEST, frozenset({"west"})))
    )
    assert forwarded.backend == "dear"
    assert east.calls == []


@virtual_time
async def test_with_no_allowed_hub_left_the_batch_gets_its_hubs_error_not_a_hub_elsewhere() -> None:
    west = ScriptedBackend("west-1", hub_failed(), region="west")
    east = ScriptedBackend("east-1", answer(), region="east")
    with pytest.raises(HubFailed, match="scripted"):
        await forwarder_over(west, east).forward(batch(route=Route(Policy.CHEAPEST, frozenset({"west"}))))
    assert east.calls == []


@virtual_time
async def test_a_hubs_4xx_is_the_requests_fault_and_does_not_fail_over() -> None:
    cheap, mid = ScriptedBackend("cheap", rejected()), ScriptedBackend("mid", answer(), price=2.0)
    with pytest.raises(HubRejected):
        await forwarder_over(cheap, mid).forward(batch())
    assert mid.calls == []


@virtual_time
async def test_a_hubs_4xx_does_not_count_against_the_hub() -> None:
    cheap = ScriptedBackend("cheap", rejected(), rejected(), answer())
    mid = ScriptedBackend("mid", handler=answer(), price=2.0)
    forwarder = forwarder_over(cheap, mid, health=Health(failures_to_eject=2, slow_start_s=0.0))
    for _ in range(2):  # as many as would eject it, had they been the hub's failures
        with pytest.raises(HubRejected):
            await forwarder.forward(batch())
    breaker = forwarder.router.breakers["cheap"]
    assert (breaker.state, breaker.consecutive_failures) == (BreakerState.CLOSED, 0)
    assert forwarder.router.state["cheap"].failures == 0
    assert (await forwarder.forward(batch())).backend == "cheap"


@virtual_time
async def test_a_batch_past_its_deadline_never_reaches_a_hub() -> None:
    cheap = ScriptedBackend("cheap", answer())
    with pytest.raises(DeadlineExceeded):
        await forwarder_over(cheap).forward(batch(budget_s=0.0))
    assert cheap.calls == []


@virtual_time
async def test_a_batch_its_hub_timed_out_is_not_failed_over() -> None:
    # A hub's timeout comes a backbone RTT before the gateway's deadline (the hub is sent the budget
    # less the RTT): that little time left is no budget for another hub.
    cheap = ScriptedBackend("cheap", deadline_exceeded(after=0.040))
    mid = ScriptedBackend("mid", answer(), price=2.0)
    with pytest.raises(DeadlineExceeded):
        await forwarder_over(cheap, mid).forward(batch(budget_s=0.050))
    assert mid.calls == []


@virtual_time
async def test_the_deadline_shrinks_across_failovers_and_never_resets() -> None:
    cheap = ScriptedBackend("cheap", hub_failed(after=0.030))
    mid = ScriptedBackend("mid", hub_failed(after=0.020), price=2.0)
    dear = ScriptedBackend("dear", answer(), price=3.0)
    sent = batch(budget_s=0.100)
    assert (await forwarder_over(cheap, mid, dear).forward(sent)).backend == "dear"
    calls = [cheap.calls[0], mid.calls[0], dear.calls[0]]
    assert {c.deadline for c in calls} == {sent.deadline}
    assert [c.budget_s for c in calls] == pytest.approx([0.100, 0.070, 0.050])


@virtual_time
async def test_when_every_hub_fails_the_batch_gets_the_last_hubs_error_not_no_backend() -> None:
    cheap, mid = ScriptedBackend("cheap", hub_failed()), ScriptedBackend("mid", hub_failed(), price=2.0)
    with pytest.raises(HubFailed) as failed:
        await forwarder_over(cheap, mid).forward(batch())
    assert not isinstance(failed.value, NoBackend)
    assert failed.value.headers["X-Served-By"] == "mid"


# -- the retry budget ---------------------------------------------------------------------------------

ONE_RETRY = Routing(retry_ratio=0.0, min_retry_concurrency=1)  # one retry in flight at a time
PATIENT = Health(failures_to_eject=10, slow_start_s=0.0)  # cheap's failures here never eject it


@virtual_time
async def test_with_the_retry_budget_exhausted_a_failed_batch_is_not_retried() -> None:
    release = asyncio.Event()
    cheap = ScriptedBackend("cheap", hub_failed(), hub_failed())
    mid = ScriptedBackend("mid", answer_when(release), answer(), price=2.0)
    forwarder = forwarder_over(cheap, mid, routing=ONE_RETRY, health=PATIENT)
    first = asyncio.create_task(forwarder.forward(batch()))
    await mid.started()  # the first batch's retry holds the only slot
    with pytest.raises(HubFailed, match="scripted"):
        await forwarder.forward(batch())
    assert len(mid.calls) == 1
    release.set()
    assert (await first).backend == "mid"


@pytest.mark.parametrize(
    ("retry", "outcome"), [(answer(), "answered"), (hub_failed(), "raised HubError")], ids=["answered", "failed"]
)
@virtual_time
async def test_a_retry_gives_its_budget_back_when_its_batch_is_done(retry: Step, outcome: str) -> None:
    cheap = ScriptedBackend("cheap", hub_failed(), hub_failed())
    mid = ScriptedBackend("mid", retry, answer(), price=2.0)
    forwarder = forwarder_over(cheap, mid, routing=ONE_RETRY, health=PATIENT)
    with contextlib.suppress(HubFailed):
        await forwarder.forward(batch())
    assert mid.calls[0].outcome == outcome
    assert forwarder.budget.in_use == 0
    assert (await forwarder.forward(batch())).backend == "mid", "the next failed batch is retried again"


@virtual_time
async def test_the_hub_is_told_the_tightest_member_s_budget_less_the_backbone_rtt() -> None:
    hub = ScriptedBackend("cheap", answer())
    forwarder = forwarder_over(hub)
    forwarder.router.observe_rtt(hub, 0.010)
    start = now()
    await forwarder.forward(
        Batch("m", "1", CHEAPEST, {"x": np.zeros((2, 4), np.float32)}, ["y"], 2, start + 1.0, start + 0.050)
    )
    assert hub.calls[0].timeout_s == pytest.approx(0.040)
