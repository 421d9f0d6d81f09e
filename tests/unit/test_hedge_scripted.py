"""Hedging (``routing.hedge``): the production forwarder over scripted hubs (tests/fakes.py), on
virtual time. The same path over real hubs: test_routing_live.py's hedge test."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Routing
from gateway.routing.forward import Forwarder
from gateway.routing.policy import Policy, Route
from tests.fakes import ScriptedBackend, Step, answer, batch, forwarder_over, hang, hub_failed, now, virtual_time

# Hubs are ranked by price (the batches route "cheapest"): cheap, then mid, then dear. Each test
# first sends cheap one batch it answers in 20 ms, so its predicted p95 is 20 ms.
P95_S = 0.020
HEDGE = Routing(hedge=True, hedge_factor=0.5)  # hedge 10 ms into a call to cheap


async def measured(cheap: ScriptedBackend, *others: ScriptedBackend, routing: Routing = HEDGE) -> Forwarder:
    """A forwarder over the hubs, once cheap has answered a batch in ``P95_S``."""
    cheap.script.appendleft(answer(after=P95_S))
    forwarder = forwarder_over(cheap, *others, routing=routing)
    assert (await forwarder.forward(batch())).backend == "cheap"
    return forwarder


@pytest.mark.parametrize("factor", [0.5, 2.0])
@virtual_time
async def test_a_slow_primary_is_hedged_to_the_next_best_hub_after_hedge_factor_times_its_p95(factor: float) -> None:
    cheap, mid = ScriptedBackend("cheap", hang()), ScriptedBackend("mid", answer(), price=2.0)
    forwarder = await measured(cheap, mid, routing=Routing(hedge=True, hedge_factor=factor))
    forwarded = await forwarder.forward(batch())
    assert forwarded.backend == "mid" and forwarded.reason.startswith("hedge:")
    assert mid.calls[0].started_at - cheap.calls[1].started_at == pytest.approx(factor * P95_S)


@virtual_time
async def test_a_primary_that_answers_before_the_hedge_delay_is_not_hedged() -> None:
    cheap, mid = ScriptedBackend("cheap", answer(after=0.009)), ScriptedBackend("mid", price=2.0)
    forwarder = await measured(cheap, mid)
    assert (await forwarder.forward(batch())).backend == "cheap"
    assert mid.calls == []


@pytest.mark.parametrize(
    ("primary", "hedge", "winner"),
    [(hang(), answer(after=0.005), "mid"), (answer(after=0.030), hang(), "cheap")],
    ids=["hedge_wins", "primary_wins"],
)
@virtual_time
async def test_the_first_answer_wins_and_the_losing_call_is_cancelled(primary: Step, hedge: Step, winner: str) -> None:
    cheap, mid = ScriptedBackend("cheap", primary), ScriptedBackend("mid", hedge, price=2.0)
    forwarder = await measured(cheap, mid)
    forwarded = await forwarder.forward(batch())
    returned_at = now()
    loser = (mid if winner == "cheap" else cheap).calls[-1]
    assert forwarded.backend == winner
    assert loser.cancelled and loser.outcome == "cancelled"
    assert loser.ended_at == returned_at, "the loser is cancelled before the answer goes back, not left running"


@virtual_time
async def test_a_failed_hedge_leaves_the_primary_to_answer() -> None:
    cheap, mid = ScriptedBackend("cheap", answer(after=0.030)), ScriptedBackend("mid", hub_failed(), price=2.0)
    forwarder = await measured(cheap, mid)
    assert (await forwarder.forward(batch())).backend == "cheap"
    assert mid.calls[0].outcome == "raised HubError"


@virtual_time
async def test_a_hedge_gets_what_is_left_of_the_deadline_not_a_fresh_one() -> None:
    cheap, mid = ScriptedBackend("cheap", hang()), ScriptedBackend("mid", answer(), price=2.0)
    forwarder = await measured(cheap, mid)
    sent = batch(budget_s=0.100)
    await forwarder.forward(sent)
    assert mid.calls[0].deadline == sent.deadline
    assert mid.calls[0].budget_s == pytest.approx(0.100 - 0.5 * P95_S)


@virtual_time
async def test_a_hedge_never_goes_to_a_hub_outside_the_allowed_regions() -> None:
    cheap = ScriptedBackend("cheap", hang(), region="west")
    east = ScriptedBackend("east", region="east", price=2.0)
    dear = ScriptedBackend("dear", answer(), region="west", price=3.0)
    forwarder = await measured(cheap, east, dear)
    forwarded = await forwarder.forward(batch(route=Route(Policy.CHEAPEST, frozenset({"west"}))))
    assert forwarded.backend == "dear" and forwarded.reason.startswith("hedge:")
    assert east.calls == []


@pytest.mark.parametrize(
    "routing",
    [Routing(hedge=False), Routing(hedge=True, hedge_factor=0.5, retry_ratio=0.0, min_retry_concurrency=0)],
    ids=["hedging_off", "no_retry_budget"],
)
@virtual_time
async def test_a_slow_primary_is_not_hedged_when_hedging_is_off_or_the_retry_budget_is_spent(routing: Routing) -> None:
    cheap, mid = ScriptedBackend("cheap", answer(after=0.030)), ScriptedBackend("mid", price=2.0)
    forwarder = await measured(cheap, mid, routing=routing)
    assert (await forwarder.forward(batch())).backend == "cheap"
    assert mid.calls == []


@virtual_time
async def test_a_hedge_gives_its_retry_budget_back_when_the_batch_is_answered() -> None:
    cheap, mid = ScriptedBackend("cheap", hang()), ScriptedBackend("mid", answer(), price=2.0)
    forwarder = await measured(cheap, mid)
    await forwarder.forward(batch())
    assert forwarder.budget.in_use == 0


@pytest.mark.parametrize("calls_out", [1, 2], ids=["before_the_hedge", "after_the_hedge"])
@virtual_time
async def test_a_hedged_batch_that_is_cancelled_cancels_every_call_it_sent(calls_out: int) -> None:
    cheap, mid = ScriptedBackend("cheap", hang()), ScriptedBackend("mid", hang(), price=2.0)
    forwarder = await measured(cheap, mid)
    forwarding = asyncio.create_task(forwarder.forward(batch()))
    await (cheap.started(2) if calls_out == 1 else mid.started())
    forwarding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forwarding
    sent = cheap.calls[1:] + mid.calls
    assert len(sent) == calls_out
    assert all(c.cancelled for c in sent)
