"""The graceful drain, in virtual time: refuse after the window, return once accepted calls are answered."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from gateway.serving import drain
from tests.fakes import ScriptedBackend, answer_when, hang, now, virtual_time
from tests.unit.test_service import call, request, service_over


def gateway_over(hub: ScriptedBackend) -> SimpleNamespace:
    """What ``drain`` touches of a gateway: its flag, its pipeline and its service."""
    service = service_over(hub)
    return SimpleNamespace(draining=False, pipeline=service.pipeline, service=service)


@virtual_time
async def test_drain_refuses_after_its_window_and_returns_once_every_accepted_call_is_answered():
    release = asyncio.Event()
    hub = ScriptedBackend("west-1", answer_when(release))
    gateway = gateway_over(hub)
    accepted = asyncio.create_task(gateway.service.answer(call(), request()))
    await hub.started()
    draining = asyncio.create_task(drain(gateway, grace_s=30.0, drain_s=1.0))
    await asyncio.sleep(0.5)
    assert gateway.draining and not gateway.service.refusing  # the window: still served, "Connection: close"
    await asyncio.sleep(1.0)
    assert gateway.service.refusing and not draining.done()  # refusing, and waiting for the accepted call
    release.set()
    await draining
    assert (await accepted).headers["X-Served-By"] == "west-1"


@virtual_time
async def test_drain_gives_up_waiting_at_the_end_of_the_grace_period():
    hub = ScriptedBackend("west-1", hang())
    gateway = gateway_over(hub)
    stuck = asyncio.create_task(gateway.service.answer(call(budget_ms="600000"), request()))
    await hub.started()
    started = now()
    await drain(gateway, grace_s=5.0, drain_s=1.0)
    assert now() - started == pytest.approx(6.0)  # the 1 s window, then the 5 s grace
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck


def test_a_serving_gateway_takes_its_start_up_heap_out_of_the_collectors_walks() -> None:
    import gc

    from gateway.serving import GC_YOUNG_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 1000  # the modules and objects alive now
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
