"""gateway/expiry.py: every waiting request's deadline on one loop timer.

Run on a real uvloop loop (the production loop, whose timers move in 1 ms steps). The waits are the
behaviour under test (a future failing at its deadline), each bounded by ``asyncio.wait``."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gateway.expiry import Expiry
from railcore.errors import DeadlineExceeded


def on_uvloop(coro_fn):  # type: ignore[no-untyped-def]
    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro_fn())

    run.__name__ = coro_fn.__name__
    return run


async def _settled(future: asyncio.Future[object], timeout_s: float = 5.0) -> None:
    done, _ = await asyncio.wait({future}, timeout=timeout_s)
    assert done, "the future was not settled within the wait"


@on_uvloop
async def test_each_future_fails_at_its_own_deadline_not_before() -> None:
    loop, expiry = asyncio.get_running_loop(), Expiry()
    now = loop.time()
    late, early = loop.create_future(), loop.create_future()
    expiry.add(now + 0.200, late, "late-model")
    expiry.add(now + 0.020, early, "early-model")  # earlier than the armed timer: re-arms it
    await _settled(early)
    assert loop.time() >= now + 0.020 - 0.001  # uvloop's timers may fire up to one 1 ms step early
    assert not late.done()
    with pytest.raises(DeadlineExceeded, match="early-model"):
        early.result()
    await _settled(late)
    assert loop.time() >= now + 0.200 - 0.001
    with pytest.raises(DeadlineExceeded, match="late-model"):
        late.result()
    assert len(expiry) == 0


@on_uvloop
async def test_an_answered_or_cancelled_future_is_left_as_it_is() -> None:
    loop, expiry = asyncio.get_running_loop(), Expiry()
    answered, cancelled, waiting = loop.create_future(), loop.create_future(), loop.create_future()
    for future in (answered, cancelled, waiting):
        expiry.add(loop.time() + 0.010, future, "m")
    answered.set_result("ok")
    cancelled.cancel()
    await _settled(waiting)
    assert answered.result() == "ok"
    assert cancelled.cancelled()
    assert isinstance(waiting.exception(), DeadlineExceeded)


@on_uvloop
async def test_a_deadline_already_past_fails_on_the_next_loop_turn() -> None:
    loop, expiry = asyncio.get_running_loop(), Expiry()
    future = loop.create_future()
    expiry.add(loop.time() - 1.0, future, "m")
    await _settled(future, timeout_s=1.0)
    assert isinstance(future.exception(), DeadlineExceeded)


@on_uvloop
async def test_answered_requests_do_not_grow_the_heap_without_bound() -> None:
    loop, expiry = asyncio.get_running_loop(), Expiry()
    far = loop.time() + 600.0  # the default budget's order: entries would outlive their requests
    live = [loop.create_future() for _ in range(10)]
    for future in live:
        expiry.add(far, future, "m")
    for _ in range(20_000):
        future = loop.create_future()
        expiry.add(far, future, "m")
        future.set_result(None)  # answered at once, as most requests are, long before the deadline
    assert len(expiry) <= 2 * 1024 + 1  # compacted: what stays is bounded by the requests in progress
    assert not any(f.done() for f in live)
    expiry.close()
    assert len(expiry) == 0


@on_uvloop
async def test_close_stops_the_timer() -> None:
    loop, expiry = asyncio.get_running_loop(), Expiry()
    future = loop.create_future()
    expiry.add(loop.time() + 0.010, future, "m")
    expiry.close()
    done, _ = await asyncio.wait({future}, timeout=0.1)  # well past the deadline: nothing fires
    assert not done
