"""The local rescue (``routing.rescue_locally``): a hub call for a batch that has not answered by the
time only the local backend's own tail is left of the budget is raced by a local run, as the edge
runtime falls back to local before its deadline. The production forwarder over scripted backends
(tests/fakes.py; ``ScriptedLocal`` is a fake of the gateway's own backend), on virtual time."""

from __future__ import annotations

from typing import ClassVar

import pytest

from gateway.backends import BackendKind
from gateway.config import Routing
from gateway.routing.forward import Forwarder
from gateway.routing.policy import Route
from railcore.errors import DeadlineExceeded
from tests.fakes import ScriptedBackend, Step, answer, batch, forwarder_over, hang, now, virtual_time

LOCAL_S = 0.001  # what the local backend's measured call takes
MARGIN_S = Routing().tail_margin_ms / 1000
BUDGET_S = 0.010  # a tight budget, as an edge device's


class ScriptedLocal(ScriptedBackend):
    """A fake of the gateway's local ONNX Runtime backend (in its own region, ``local``)."""

    kind: ClassVar[BackendKind] = BackendKind.LOCAL


async def measured(hub: ScriptedBackend, local: ScriptedLocal, routing: Routing | None = None) -> Forwarder:
    """A forwarder once the hub has answered a batch in 2 ms and the local backend one in 1 ms."""
    hub.script.appendleft(answer(after=0.002))
    local.script.appendleft(answer(after=LOCAL_S))
    forwarder = forwarder_over(hub, local, routing=routing)
    assert (await forwarder.forward(batch())).backend == "h1"
    everywhere_but_hub = batch(route=Route(regions=frozenset({"local"})))
    assert (await forwarder.forward(everywhere_but_hub)).backend == "local"
    return forwarder


def backends(hub_step: Step, local_step: Step | None = None) -> tuple[ScriptedBackend, ScriptedLocal]:
    hub = ScriptedBackend("h1", hub_step)
    local = ScriptedLocal("local", *(() if local_step is None else (local_step,)), region="local", price=0.0)
    return hub, local


@virtual_time
async def test_a_hub_call_still_out_when_only_local_s_tail_is_left_is_rescued_locally() -> None:
    hub, local = backends(hang(), answer(after=LOCAL_S))
    forwarder = await measured(hub, local)
    sent = batch(budget_s=BUDGET_S)
    forwarded = await forwarder.forward(sent)
    assert forwarded.backend == "local" and forwarded.reason.startswith("rescue:")
    assert local.calls[-1].started_at == pytest.approx(sent.route_deadline - LOCAL_S - MARGIN_S)
    assert now() < sent.route_deadline, "answered within the budget"
    assert hub.calls[-1].cancelled, "the hub's call is not left running"


@virtual_time
async def test_a_hub_that_answers_before_the_rescue_time_is_not_raced() -> None:
    hub, local = backends(answer(after=0.004))
    forwarder = await measured(hub, local)
    assert (await forwarder.forward(batch(budget_s=BUDGET_S))).backend == "h1"
    assert len(local.calls) == 1, "no local run beyond the measuring one"


@pytest.mark.parametrize(
    ("routing", "route"),
    [(Routing(rescue_locally=False), None), (None, Route(regions=frozenset({"west"})))],
    ids=["rescue_off", "residency_excludes_local"],
)
@virtual_time
async def test_no_rescue_when_it_is_off_or_residency_leaves_local_out(routing: Routing | None, route: Route) -> None:
    hub, local = backends(hang())
    forwarder = await measured(hub, local, routing)
    with pytest.raises(DeadlineExceeded):
        await forwarder.forward(batch(budget_s=BUDGET_S, **({} if route is None else {"route": route})))
    assert len(local.calls) == 1


@virtual_time
async def test_a_rescued_hub_call_counts_in_the_hub_s_tail_so_the_next_tight_batch_goes_local() -> None:
    hub, local = backends(hang(), answer(after=LOCAL_S))
    local.handler = answer(after=LOCAL_S)
    forwarder = await measured(hub, local)
    assert (await forwarder.forward(batch(budget_s=BUDGET_S))).reason.startswith("rescue:")
    forwarded = await forwarder.forward(batch(budget_s=BUDGET_S))
    assert forwarded.backend == "local" and "no hub fits" in forwarded.reason
    assert len(hub.calls) == 2, "the hub is not sent the next tight batch"


HUB_S = 0.002  # what each of the hub's measured calls took
ENOUGH = 20  # calls: enough for a 0.95 quantile to mean something


async def measured_over(hub: ScriptedBackend, local: ScriptedLocal, routing: Routing | None = None) -> Forwarder:
    """``measured``, then the hub's window filled with ``ENOUGH`` calls of ``HUB_S`` (the local backend
    answers every call: a hub call at its own p95 exactly may be raced, and the hub wins)."""
    local.handler = answer(after=LOCAL_S)
    forwarder = await measured(hub, local, routing)
    for _ in range(ENOUGH):
        hub.script.appendleft(answer(after=HUB_S))
        assert (await forwarder.forward(batch())).backend == "h1"
    return forwarder


@virtual_time
async def test_a_hub_call_past_the_hub_s_own_p95_is_rescued_then_not_when_the_budget_alone_would() -> None:
    hub, local = backends(answer(after=0.006))  # in budget, three times its usual
    forwarder = await measured_over(hub, local)
    sent = batch(budget_s=BUDGET_S)
    forwarded = await forwarder.forward(sent)
    assert forwarded.backend == "local" and forwarded.reason.startswith("rescue:")
    assert local.calls[-1].started_at - hub.calls[-1].started_at == pytest.approx(HUB_S)
    assert hub.calls[-1].cancelled
    # It counts in the hub's tail as what it took at least (until the local answer), not the whole
    # budget: one slow call among 20 does not send the next tight batch away from the hub.
    hub.script.appendleft(answer(after=HUB_S))
    assert (await forwarder.forward(batch(budget_s=BUDGET_S))).backend == "h1"


@virtual_time
async def test_with_rescue_quantile_0_only_the_budget_calls_a_rescue() -> None:
    hub, local = backends(answer(after=0.006))
    forwarder = await measured_over(hub, local, Routing(rescue_quantile=0.0))
    assert (await forwarder.forward(batch(budget_s=BUDGET_S))).backend == "h1"
    assert len(local.calls) == 1, "no local run beyond the measuring one"


@virtual_time
async def test_too_few_calls_for_the_quantile_leave_the_rescue_to_the_budget() -> None:
    hub, local = backends(answer(after=0.006), answer(after=LOCAL_S))
    forwarder = await measured(hub, local)  # one hub call measured: its "p95" means nothing yet
    assert (await forwarder.forward(batch(budget_s=BUDGET_S))).backend == "h1"
