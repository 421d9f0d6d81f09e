"""Fakes for deterministic routing tests: a scripted hub and an event loop on virtual time.

``ScriptedBackend`` is a **fake**: a hub that does no I/O and answers each batch as its script
says (as httpx's ``MockTransport(handler)`` fakes a transport). It exists because failover, the
retry budget, hedging and half-open trials depend on *which* hub fails *when*; a real hub cannot be
made to fail the second call and answer the third, or to hang until the test lets it go, on cue.
The tests against real hubs (``test_routing_live.py``, ``test_fault_routing.py``) stay beside these
and prove the same paths over sockets; these prove the decisions, in milliseconds.

``virtual_time`` runs a test on ``VirtualTimeLoop``, whose clock jumps to the next timer whenever no
task is ready. Timeouts, deadlines and hedge delays then fire exactly when due and at once; a
scripted latency (``answer(after=0.03)``) is a point in virtual time, not a wait. A test that
deadlocks (every task waiting on an event nobody sets) fails at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import functools
import random
import selectors
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gateway.backends import Backend, BackendKind
from gateway.config import Health, Routing
from gateway.metrics import Metrics
from gateway.routing.forward import Batch, Forwarder
from gateway.routing.policy import Policy, Route
from gateway.routing.router import Router
from railcore.catalog import ModelInfo, TensorMeta
from railcore.errors import DeadlineExceeded, HubError, HubRejected, HubUnreachable, RailgateError

MODEL = ModelInfo("m", ("1",), "onnx", (TensorMeta("x", "FP32", (-1, 4)),), (TensorMeta("y", "FP32", (-1, 1)),), 64)

# -- virtual time -----------------------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: where the loop would wait ``timeout`` seconds, the virtual clock moves on."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: every task is waiting and no timer is set")
        self._loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual: it starts at 0 and jumps to each due timer."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test on a fresh ``VirtualTimeLoop`` (pytest-asyncio does not see it).

    The whole test has 60 virtual seconds, a safety net that fires at once on a stuck test."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60.0):
                await test(*args, **kwargs)

        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(bounded())

    return run


async def elapse(seconds: float) -> None:
    """Let ``seconds`` of virtual time pass (e.g. a hub's ejection back-off)."""
    await asyncio.sleep(seconds)


def now() -> float:
    """The running loop's clock: the one batch deadlines are on."""
    return asyncio.get_running_loop().time()


# -- the scripted hub -------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One ``infer`` call the fake received, and how it ended."""

    model: str
    rows: int
    outputs: list[str]
    deadline: float
    started_at: float
    ended_at: float | None = None
    outcome: str = "running"  # answered | raised <Error> | cancelled | timed out
    cancelled: bool = False
    timeout_s: float | None = None  # the budget the hub was told (Triton's ``timeout``), if any

    @property
    def budget_s(self) -> float:
        """What was left of the deadline when the call reached the hub."""
        return self.deadline - self.started_at


Step = Callable[[Call], Awaitable[dict[str, np.ndarray]]]


def _outputs(call: Call) -> dict[str, np.ndarray]:
    return {name: np.zeros((call.rows, 1), np.float32) for name in call.outputs}


def answer(outputs: dict[str, np.ndarray] | None = None, after: float = 0.0) -> Step:
    """Answer ``outputs`` (by default, each output asked for, one row per input row), ``after``
    seconds into the call."""

    async def step(call: Call) -> dict[str, np.ndarray]:
        await asyncio.sleep(after)
        return _outputs(call) if outputs is None else outputs

    return step


def answer_when(event: asyncio.Event) -> Step:
    """Answer once the test sets ``event``."""

    async def step(call: Call) -> dict[str, np.ndarray]:
        await event.wait()
        return _outputs(call)

    return step


def hang() -> Step:
    """Never answer: the call ends only when it is cancelled or its deadline passes."""

    async def step(call: Call) -> dict[str, np.ndarray]:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    return step


def fail(error: type[RailgateError], after: float = 0.0) -> Step:
    """Raise a fresh ``error`` (a railgate error, as the real hub clients raise), ``after`` seconds in."""

    async def step(call: Call) -> dict[str, np.ndarray]:
        await asyncio.sleep(after)
        raise error(f"scripted {error.__name__} from the hub")

    return step


def hub_failed(after: float = 0.0) -> Step:
    """The hub's own error (its 5xx): its fault, so the batch may fail over."""
    return fail(HubError, after)


def unreachable(after: float = 0.0) -> Step:
    """The connection was refused, reset or closed: the hub's fault, so the batch may fail over."""
    return fail(HubUnreachable, after)


def rejected(after: float = 0.0) -> Step:
    """The hub answered 4xx: the request's fault, not the hub's."""
    return fail(HubRejected, after)


def deadline_exceeded(after: float = 0.0) -> Step:
    """The hub timed out ``after`` seconds in: e.g. Triton's own timeout, which is sent the budget less
    the backbone RTT, so it fires before the gateway's deadline."""
    return fail(DeadlineExceeded, after)


class ScriptedBackend(Backend):
    """A fake hub that answers each ``infer`` by the next step of its script, and records the call.

    ``steps`` are taken in order, one per call; when they run out, ``handler`` (if given) answers
    every further call, else the call is an ``AssertionError`` (an unexpected call fails the test).
    Like the real hub clients, a call still running at its deadline raises ``DeadlineExceeded``.
    """

    kind: ClassVar[BackendKind] = BackendKind.HUB

    def __init__(
        self,
        name: str,
        *steps: Step,
        handler: Step | None = None,
        region: str = "west",
        price: float = 1.0,
        capacity: int = 4,
        model: ModelInfo = MODEL,
    ) -> None:
        super().__init__(name, region, price, 0.0, capacity)
        self.models = {model.name: model}
        self.healthy = True
        self.script: deque[Step] = deque(steps)
        self.handler = handler
        self.calls: list[Call] = []
        self._waiters: list[tuple[int, asyncio.Future[Call]]] = []

    async def started(self, n: int = 1) -> Call:
        """Wait until the ``n``-th call has reached this hub; return it."""
        if len(self.calls) >= n:
            return self.calls[n - 1]
        waiter: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        return await waiter

    async def discover(self) -> dict[str, ModelInfo]:
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        return self.healthy

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float,
        timeout_s: float | None = None,
        trace: Any = None,  # the call's span (tracing on): a scripted hub has nowhere to send it
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        call = Call(model, rows, list(outputs), deadline, loop.time(), timeout_s=timeout_s)
        self.calls.append(call)
        for n, waiter in [w for w in self._waiters if w[0] <= len(self.calls)]:
            self._waiters.remove((n, waiter))
            if not waiter.done():
                waiter.set_result(self.calls[n - 1])
        step = self.script.popleft() if self.script else self.handler
        if step is None:
            call.outcome = "raised AssertionError"
            raise AssertionError(f"{self.name}: call {len(self.calls)} is past the end of its script")
        self.inflight += 1
        try:
            async with asyncio.timeout_at(deadline):
                result = await step(call)
        except TimeoutError:
            call.outcome = "timed out"
            raise DeadlineExceeded(f"hub {self.name} did not answer {model!r} before the deadline") from None
        except asyncio.CancelledError:
            call.outcome, call.cancelled = "cancelled", True
            raise
        except RailgateError as exc:
            call.outcome = f"raised {type(exc).__name__}"
            raise
        else:
            call.outcome = "answered"
            return result
        finally:
            self.inflight -= 1
            call.ended_at = loop.time()


# -- the production forwarder over fakes ------------------------------------------------------------

CHEAPEST = Route(Policy.CHEAPEST)  # hubs are ranked by price alone: the script's order is the test's


def router_over(*hubs: Backend, routing: Routing | None = None, health: Health | None = None) -> Router:
    """The production ``Router`` over ``hubs``, on the running loop's (virtual) clock.

    Slow start is off unless ``health`` says otherwise, so a hub's share is 0 or 1, never a coin."""
    health = health or Health(slow_start_s=0.0)
    router = Router(list(hubs), routing, health, rng=random.Random(0), clock=asyncio.get_running_loop().time)
    router.rebuild_catalog()
    return router


def forwarder_over(*hubs: Backend, routing: Routing | None = None, health: Health | None = None) -> Forwarder:
    """The production ``Forwarder`` over a ``router_over(hubs)``, with no requests counted in progress
    (so the retry budget is ``min_retry_concurrency``)."""
    routing = routing or Routing()
    return Forwarder(router_over(*hubs, routing=routing, health=health), routing, Metrics(), lambda: 0)


def batch(budget_s: float = 1.0, route: Route = CHEAPEST, rows: int = 2) -> Batch:
    """A batch of ``rows`` for the fake model, due ``budget_s`` from now."""
    deadline = now() + budget_s
    return Batch("m", "1", route, {"x": np.zeros((rows, 4), np.float32)}, ["y"], rows, deadline, deadline)
