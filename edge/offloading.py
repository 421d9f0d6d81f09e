"""The remote half of an edge call: how long a call to the gateway may take, and the fallback.

A remote call is cut early enough for a local run to still fit the budget (``window``); when it
fails or is cut, the call falls back to the device if the model is there (``fall_back``), else the
caller gets the error. ``call_from_thread`` is the same for ``infer_sync``'s plain threads: the
call runs on the runtime's loop and this thread's own timed wait cuts it, so the fallback starts
on time rather than after a late loop timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.engine import MicroBatcher
from edge.errors import ModelUnavailable
from edge.link import GatewayLink
from edge.metrics import EdgeMetrics
from edge.offload import Decision
from edge.remote import RemoteFailed, RemoteReply
from edge.tracing import remote_span
from railcore.breaker import Ticket
from railcore.errors import Cause, DeadlineExceeded
from railcore.tracing import end_span

# A remote call is cut early enough to leave room for the fallback run: 1.5x its predicted time, plus
# slack for late timers and thread wake-ups on a loaded device (a floor and a share of the budget).
_FALLBACK_RESERVE = 1.5
_FALLBACK_FLOOR_S = 0.002
_FALLBACK_BUDGET_SHARE = 0.05


@dataclass(slots=True)
class Plan:
    """Where one call runs and what it needs there: the decision, the local lane and feed, the deadline."""

    decision: Decision
    lane: MicroBatcher | None
    feed: dict[str, np.ndarray] | None
    rows: int
    deadline: float  # time.monotonic()
    budget_s: float
    local_ms: float | None
    ticket: Ticket | None = None  # the circuit's pass for a remote call: settled by the link, or released
    outside: str | None = None  # why residency keeps the call off the device, if it does
    trace: Any = None  # the call's span when tracing is on (edge/tracing.py)


class Offload:
    """Calls to the gateway within a window that leaves room for the fallback, and the fallback itself."""

    def __init__(self, link: GatewayLink | None, metrics: EdgeMetrics, tracer: Any = None) -> None:
        self.link = link
        self.metrics = metrics
        self.tracer = tracer  # None: tracing off

    def window(self, model: str, plan: Plan) -> float | None:
        """Seconds a remote call may take: what leaves room for a local run after it (None: no room left)."""
        reserve_s = 0.0
        if plan.lane is not None:
            local_s = (plan.local_ms or 0.0) / 1000
            reserve_s = local_s * _FALLBACK_RESERVE + _FALLBACK_FLOOR_S + plan.budget_s * _FALLBACK_BUDGET_SHARE
        timeout_s = plan.deadline - time.monotonic() - reserve_s
        if timeout_s > 0:
            return timeout_s
        assert self.link is not None
        self.link.release(plan.ticket)  # the call is not sent: a trial it held may go to another
        if plan.lane is None:
            raise DeadlineExceeded(f"budget spent before {model!r} could be sent to the gateway")
        return None

    async def call(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        plan: Plan,
        headers: dict[str, str] | None,
        timeout_s: float,
    ) -> tuple[RemoteReply | None, str]:
        """The gateway's reply and the decision's reason, or (None, fallback cause) when the call runs locally."""
        assert self.link is not None
        if plan.trace is not None:
            return await self._traced_call(model, version, inputs, plan, headers, timeout_s)
        try:
            reply = await self.link.infer(model, version, dict(inputs), timeout_s, headers, plan.ticket)
        except RemoteFailed as exc:
            return None, self.fall_back(model, plan, exc)
        return reply, plan.decision.reason

    async def _traced_call(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        plan: Plan,
        headers: dict[str, str] | None,
        timeout_s: float,
    ) -> tuple[RemoteReply | None, str]:
        """``call`` inside the remote call's span, whose traceparent goes to the gateway."""
        assert self.link is not None
        span, headers = remote_span(self.tracer, plan.trace, self.link.url, model, headers, timeout_s)
        try:
            reply = await self.link.infer(model, version, dict(inputs), timeout_s, headers, plan.ticket)
        except RemoteFailed as exc:
            end_span(span, exc)
            cause = self.fall_back(model, plan, exc)
            plan.trace.add_event("fallback", {"railgate.cause": cause, "error.type": exc.cause.value})
            return None, cause
        except BaseException as exc:
            end_span(span, exc)
            raise
        span.set_attribute("railgate.served_by", reply.served_by)
        span.end()
        return reply, plan.decision.reason

    def call_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        plan: Plan,
        headers: dict[str, str] | None,
    ) -> tuple[RemoteReply | None, str]:
        """The remote call on the loop, cut by this thread's own timed wait: the fallback starts on time, not
        after a late loop timer and a hop back between threads."""
        timeout_s = self.window(model, plan)
        if timeout_s is None:
            return None, self.fallback(model, "remote_timeout")
        future = asyncio.run_coroutine_threadsafe(self.call(model, version, inputs, plan, headers, timeout_s), loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if not future.cancel():  # it finished meanwhile: take its answer
                return future.result()
        assert self.link is not None
        cut = RemoteFailed(f"did not answer {model!r} within {timeout_s * 1000:.1f} ms", Cause.TIMEOUT)
        self.link.failed(model, cut, timeout_s, plan.ticket)
        return None, self.fall_back(model, plan, cut)

    def fall_back(self, model: str, plan: Plan, exc: RemoteFailed) -> str:
        """The fallback cause after a failed remote call, or raise when the model cannot run locally."""
        if plan.lane is None:
            where = f"may not run on this device ({plan.outside})" if plan.outside else "is not on this device"
            if exc.timeout:
                raise DeadlineExceeded(f"model {model!r} {where} and the gateway {exc}")
            raise ModelUnavailable(f"model {model!r} {where} and the gateway failed: {exc}")
        return self.fallback(model, "remote_timeout" if exc.timeout else "remote_failed")

    def fallback(self, model: str, cause: str) -> str:
        self.metrics.fallbacks.labels(model, cause).inc()
        return cause
