"""A half-open trial always resolves (issue 12 item 4): the production forwarder and breaker over
scripted hubs (tests/fakes.py), on virtual time.

Each test ejects hub ``cheap`` (two failed batches, which fail over to ``mid``), lets the 1 s
back-off pass, and sends the trial batch to it. However the trial ends, the hub is not lost for
good: unless the trial itself showed the hub failing, the next batch may go to it again. (Before the
fix, a cancelled, 4xx'd or early-timed-out trial left ``trial_in_flight`` set and the hub's share at 0
for good: the last three tests failed.)
"""

from __future__ import annotations

import pytest

from gateway.config import Health, Routing
from gateway.routing.forward import Forwarder
from railcore.breaker import BreakerState
from railcore.errors import DeadlineExceeded, HubRejected, RailgateError
from tests.fakes import (
    ScriptedBackend,
    Step,
    answer,
    batch,
    elapse,
    forwarder_over,
    hang,
    hub_failed,
    now,
    rejected,
    virtual_time,
)

P95_S = 0.020  # cheap's, from one batch it answered before it failed
EJECTION = Health(failures_to_eject=2, base_ejection_s=1.0, slow_start_s=0.0)
HEDGE = Routing(hedge=True, hedge_factor=0.5)


async def half_open(trial: Step, routing: Routing | None = None) -> tuple[Forwarder, ScriptedBackend]:
    """Forwarder and cheap, with cheap half-open and ``trial`` next in its script, then an answer."""
    cheap = ScriptedBackend("cheap", answer(after=P95_S), hub_failed(), hub_failed(), trial, answer())
    mid = ScriptedBackend("mid", handler=answer(after=0.050), price=2.0)  # slower than cheap's p95
    forwarder = forwarder_over(cheap, mid, routing=routing, health=EJECTION)
    assert (await forwarder.forward(batch())).backend == "cheap"
    for _ in range(2):
        assert (await forwarder.forward(batch())).backend == "mid", "cheap failed it over"
    await elapse(1.0)
    assert forwarder.router.breakers["cheap"].share(now()) == 1.0
    assert forwarder.router.breakers["cheap"].state is BreakerState.HALF_OPEN
    return forwarder, cheap


async def next_batch_goes_to(forwarder: Forwarder) -> str:
    return (await forwarder.forward(batch())).backend


@virtual_time
async def test_a_successful_trial_closes_the_breaker() -> None:
    forwarder, cheap = await half_open(answer())
    assert await next_batch_goes_to(forwarder) == "cheap"
    assert cheap.calls[3].outcome == "answered"
    assert forwarder.router.breakers["cheap"].state is BreakerState.CLOSED


@virtual_time
async def test_a_failed_trial_ejects_the_hub_again_for_twice_as_long() -> None:
    forwarder, cheap = await half_open(hub_failed())  # one failure, where a closed hub needs two
    assert await next_batch_goes_to(forwarder) == "mid"  # the trial, failed over (50 ms)
    assert cheap.calls[3].outcome == "raised HubError"
    await elapse(1.0)  # past the first back-off (1 s), within the second (2 s)
    assert await next_batch_goes_to(forwarder) == "mid"
    await elapse(1.0)
    assert await next_batch_goes_to(forwarder) == "cheap"


@virtual_time
async def test_a_trial_cancelled_as_a_hedge_loser_does_not_lose_the_hub() -> None:
    forwarder, cheap = await half_open(hang(), routing=HEDGE)
    forwarded = await forwarder.forward(batch())
    assert forwarded.backend == "mid" and forwarded.reason.startswith("hedge:")
    assert cheap.calls[3].cancelled
    assert await next_batch_goes_to(forwarder) == "cheap"


@pytest.mark.parametrize(
    ("trial", "budget_s", "error"),
    [(rejected(), 1.0, HubRejected), (hang(), P95_S / 2, DeadlineExceeded)],
    ids=["answered_4xx", "timed_out_before_its_p95"],
)
@virtual_time
async def test_a_trial_that_says_nothing_about_the_hub_does_not_lose_it(
    trial: Step, budget_s: float, error: type[RailgateError]
) -> None:
    forwarder, cheap = await half_open(trial)
    with pytest.raises(error):
        await forwarder.forward(batch(budget_s=budget_s))
    assert len(cheap.calls) == 4, "the trial went to cheap"
    assert await next_batch_goes_to(forwarder) == "cheap"
