"""Warm-up seeds the latency estimates with a sample measured on the router's clock (high resolution,
and virtual in the simulator), not on the event loop's, which moves in 1 ms steps under uvloop."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.warmup import warm_up
from tests.fakes import ScriptedBackend, Step, router_over, virtual_time


class RouterClock:
    """A clock the test moves by hand, for the router: the event loop's (virtual) clock stands still."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer_taking(clock: RouterClock, seconds: float) -> Step:
    async def step(call) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
        clock.now += seconds
        return {name: np.zeros((call.rows, 1), np.float32) for name in call.outputs}

    return step


@virtual_time
async def test_the_warm_up_sample_is_measured_on_the_router_s_clock() -> None:
    clock = RouterClock()
    hub = ScriptedBackend("west-1", handler=answer_taking(clock, 0.0123))
    router = router_over(hub)
    router.clock = clock
    await warm_up(hub, router, timeout_s=5.0)
    assert router.state["west-1"].models["m"].total.value == pytest.approx(0.0123)
