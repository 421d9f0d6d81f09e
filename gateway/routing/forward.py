"""Sending one batch: the chosen backend, failover to the next-best, and optional hedging.

A batch whose hub fails is retried on the next-best allowed backend while its deadline allows and
the retry budget has room (Envoy's: concurrent retries <= ``retry_ratio`` of active requests, at
least ``min_retry_concurrency``). With hedging on, a batch whose hub has not answered by its
predicted p95 is also sent to the next-best backend; the first answer wins and the other call is
cancelled. Over gRPC Triton cancels the loser's work; over HTTP closing the connection cannot stop
a request Triton already queued, so the loser's compute is wasted. Hedges spend the same budget as
retries. The deadline shrinks across retries and hedges and never resets.

The local rescue (``routing.rescue_locally``, on by default): a hub call still out when only the local
backend's tail (plus ``routing.tail_margin_ms``) is left of the budget, or sooner once it is past the
hub's own recent ``routing.rescue_quantile`` (0.95), is raced by a local run, where residency allows
local, spending the same budget as hedges. A hub call that loses a rescue counts in the hub's tail as
what it is known to have taken at least: the whole budget it was given when the budget called the
rescue (so the next tight batches go local, not to the hub and a rescue), the time until the local
answer when its own quantile did.

What a failure means is its class (railcore.errors, translated once in gateway/backends/): a
``HubFailed`` (unreachable, protocol error, the hub's 5xx) counts against the hub and fails over; a
timeout counts only past the hub's own p95; ``HubRejected`` (the hub's 4xx) is the request's fault:
no failover, no mark. Every call settles its breaker ticket, whatever happens to it (cancelled as a
hedge loser included), so a half-open trial always resolves.

Deadlines are on the event loop's clock (asyncio's timers run on it). Durations (the backend's
time, EWMA samples, the p95 comparison) are measured on ``clock``, the router's by default: a
high-resolution monotonic clock, where uvloop's ``loop.time()`` moves in 1 ms steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.backends import BackendKind, require_rows
from gateway.config import Routing
from gateway.metrics import Metrics
from gateway.routing.policy import Route
from gateway.routing.router import Router, Selection
from railcore.errors import Cause, DeadlineExceeded, HubFailed, HubModelFailed, HubRejected, NoBackend
from railcore.tracing import end_span

log = logging.getLogger("railgate.forward")


@dataclass(slots=True)
class RetryBudget:
    """Concurrent retries (and hedges) allowed: ``max(min_concurrent, ratio * active requests)``."""

    ratio: float = 0.2
    min_concurrent: int = 3
    in_use: int = 0

    def try_acquire(self, active_requests: int) -> bool:
        if self.in_use >= max(self.min_concurrent, int(self.ratio * active_requests)):
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Forwarded:
    backend: str
    reason: str
    outputs: dict[str, np.ndarray]
    backend_s: float


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Batch:
    model: str
    version: str
    route: Route
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    rows: int  # 0 for a model that does not batch
    deadline: float  # the latest member's: no hub call outlives it
    route_deadline: float  # the earliest member's: the hub chosen must fit it
    trace: Any = None  # the batch's gateway.tracing.BatchTrace when tracing is on: each call is its child span

    def budget_s(self, now: float) -> float:
        """The budget a hub must fit: the earliest member's, or, once that member has been
        answered 504 by its own timeout, what is left for the others."""
        remaining = self.route_deadline - now
        return remaining if remaining > 0 else self.deadline - now

    def hub_timeout_s(self, now: float, rtt_s: float) -> float:
        """What the hub itself is told it has (Triton's ``timeout``): the tightest member's budget
        less the backbone's round trip, so a batch that waits at the hub past the point where its
        answer could still arrive in time is dropped there, not computed for nobody. Never 0, which
        Triton reads as no timeout at all."""
        return max(self.budget_s(now) - rtt_s, 1e-6)


class Forwarder:
    def __init__(
        self,
        router: Router,
        config: Routing,
        metrics: Metrics,
        active: Callable[[], int],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.router = router
        self.config = config
        self.metrics = metrics
        self.active = active
        self.clock = clock or router.clock  # durations; deadlines are on the loop's clock
        self.budget = RetryBudget(config.retry_ratio, config.min_retry_concurrency)

    async def forward(self, batch: Batch) -> Forwarded:
        loop = asyncio.get_running_loop()
        tried: set[str] = set()
        failure: HubFailed | None = None
        holding = False  # whether this attempt spends the retry budget
        try:
            while True:
                remaining = batch.deadline - loop.time()
                if remaining <= 0:
                    raise failure or DeadlineExceeded(f"latency budget ran out before {batch.model!r} was sent")
                try:
                    selection = self.router.choose(
                        batch.model, batch.budget_s(loop.time()), batch.route, max(batch.rows, 1), frozenset(tried)
                    )
                except NoBackend:
                    if failure is not None:  # say what failed, not that nothing is left to try
                        raise failure from None
                    raise
                tried.add(selection.backend.name)
                if failure is not None:
                    selection = dataclasses.replace(selection, reason=f"failover: {selection.reason}")
                try:
                    return await self._attempt(batch, selection, tried)
                except HubFailed as exc:
                    failure = exc
                    if holding:
                        self.budget.release()
                    holding = self.budget.try_acquire(self.active())
                    if not holding:
                        log.info("event=retry_budget_exhausted model=%s hub=%s", batch.model, selection.backend.name)
                        raise
                    self.metrics.retries.labels(selection.backend.name).inc()
                    if batch.trace is not None:
                        batch.trace.event(
                            "failover", {"railgate.from": selection.backend.name, "error.type": type(exc).__name__}
                        )
                    log.info("event=failover model=%s from=%s error=%s", batch.model, selection.backend.name, exc)
        finally:
            if holding:
                self.budget.release()

    async def _attempt(self, batch: Batch, first: Selection, tried: set[str]) -> Forwarded:
        loop = asyncio.get_running_loop()
        given_s = batch.budget_s(loop.time())
        hedge_after = self._hedge_delay(first, batch)
        rescue_after, rescue_late = self._rescue_delay(first, batch, tried, given_s)
        if hedge_after is None and rescue_after is None:
            return await self._call(batch, first)
        rescue = rescue_after is not None and (hedge_after is None or rescue_after < hedge_after)
        wait_s = rescue_after if rescue else hedge_after
        primary = loop.create_task(self._call(batch, first))
        sent_at = self.clock()
        try:
            done, _ = await asyncio.wait({primary}, timeout=wait_s)
            if done or not self.budget.try_acquire(self.active()):
                return await primary
            try:
                try:
                    second = self._second(batch, tried, rescue)
                except NoBackend:
                    return await primary
                tried.add(second.backend.name)
                kind = "rescue" if rescue else "hedge"
                self.metrics.hedges.labels(second.backend.name).inc()
                if batch.trace is not None:
                    batch.trace.event(kind, {"railgate.to": second.backend.name, "railgate.after_s": wait_s})
                hedge = loop.create_task(
                    self._call(batch, dataclasses.replace(second, reason=f"{kind}: {second.reason}", predicted_s=None))
                )
                forwarded = await _first_success(primary, hedge)
                if rescue and forwarded.backend != first.backend.name:
                    # The hub's real time is unknown. Raced because it missed the time it could be
                    # waited for, its tail counts it as the whole budget it was given (the next tight
                    # batch goes local, not to the hub and its rescue again); raced because it was past
                    # its own quantile, as the time it is known to have taken at least.
                    known_s = given_s if rescue_late else self.clock() - sent_at
                    self.router.observe_tail(first.backend, batch.model, max(batch.rows, 1), known_s)
                return forwarded
            finally:
                self.budget.release()
        finally:
            if not primary.done():
                primary.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await primary

    def _second(self, batch: Batch, tried: set[str], rescue: bool) -> Selection:
        """The backend a hedge (the next-best) or a rescue (the local one) is sent to."""
        loop = asyncio.get_running_loop()
        exclude = frozenset(tried)
        if rescue:
            hubs = self.router.candidates(batch.model, batch.route, exclude)
            exclude |= {b.name for b in hubs if b.kind != BackendKind.LOCAL}
        return self.router.choose(batch.model, batch.budget_s(loop.time()), batch.route, max(batch.rows, 1), exclude)

    def _rescue_delay(
        self, selection: Selection, batch: Batch, tried: set[str], budget_s: float
    ) -> tuple[float | None, bool]:
        """How long a hub call may go unanswered before the local backend races it, and whether that
        is the budget's call: until only the local backend's own tail (plus the margin) is left of
        the budget, or until the call is past the hub's own recent ``rescue_quantile`` where that
        comes first. None: no rescue (off, not a hub, residency leaves local out, local unmeasured,
        or no time for it)."""
        if not self.config.rescue_locally or selection.backend.kind != BackendKind.HUB:
            return None, False
        candidates = self.router.candidates(batch.model, batch.route, frozenset(tried))
        local = next((b for b in candidates if b.kind == BackendKind.LOCAL), None)
        if local is None:
            return None, False
        rows = max(batch.rows, 1)
        tail = self.router.tail_s(local, batch.model, rows)
        if tail is None or budget_s - tail <= 0:
            return None, False
        late = budget_s - tail
        quantile = self.config.rescue_quantile
        hub_s = self.router.measured_quantile_s(selection.backend, batch.model, rows, quantile) if quantile else None
        if hub_s is None or hub_s >= late:
            return late, True
        return hub_s, False

    def _hedge_delay(self, selection: Selection, batch: Batch) -> float | None:
        if not self.config.hedge or selection.backend.kind != BackendKind.HUB:
            return None
        state = self.router.state[selection.backend.name].models.get(batch.model)
        p95 = state.total.p95 if state else None
        return None if p95 is None else p95 * self.config.hedge_factor

    async def _call(self, batch: Batch, selection: Selection) -> Forwarded:
        backend, ticket = selection.backend, selection.ticket
        start = self.clock()
        rows = max(batch.rows, 1)
        settled = False  # whether the breaker ticket has been settled; if not, it is released
        span = None if batch.trace is None else batch.trace.backend_call(selection, batch.model, rows)
        self.metrics.inflight.labels(backend.name).inc()
        try:
            rtt = self.router.state[backend.name].rtt.value or 0.0
            timeout_s = batch.hub_timeout_s(asyncio.get_running_loop().time(), rtt)
            if span is None:
                outputs = await backend.infer(
                    batch.model, batch.version, batch.inputs, batch.outputs, batch.deadline, timeout_s=timeout_s
                )
            else:  # the call's span goes with it (a hub is sent its traceparent)
                outputs = await backend.infer(
                    batch.model, batch.version, batch.inputs, batch.outputs, batch.deadline, timeout_s, span
                )
            if batch.rows:
                require_rows(backend.name, outputs, batch.rows)
        except HubFailed as exc:
            settled = True
            self._failed(batch, selection, rows, self.clock() - start, exc.cause)
            exc.headers.setdefault("X-Served-By", backend.name)
            exc.headers.setdefault("X-Route-Reason", selection.reason)
            raise
        except (HubRejected, HubModelFailed) as exc:
            # The request's fault (a 4xx), or its data's (the model failed on it): no mark against
            # the hub, and no failover (any hub would answer the same).
            settled = True
            self.router.release(backend, ticket, exc.cause)
            self.metrics.hub_failures.labels(backend.name, exc.cause).inc()
            exc.headers.setdefault("X-Served-By", backend.name)
            exc.headers.setdefault("X-Route-Reason", selection.reason)
            raise
        except DeadlineExceeded as exc:
            exc.headers.setdefault("X-Served-By", backend.name)
            exc.headers.setdefault("X-Route-Reason", selection.reason)
            # A timeout counts against the hub only if it had longer than its own predicted p95:
            # a budget tighter than the backbone is the request's problem, not the hub's.
            elapsed = self.clock() - start
            state = self.router.state[backend.name].models.get(batch.model)
            p95 = state.total.p95 if state else None
            if p95 is None or elapsed > p95:
                settled = True
                self._failed(batch, selection, rows, elapsed, Cause.TIMEOUT)
            raise
        finally:
            self.metrics.inflight.labels(backend.name).dec()
            if not settled:  # cancelled (a hedge loser), cut by its own budget, or unexpected
                self.router.release(backend, ticket)
            if span is not None:
                end_span(span, sys.exc_info()[1])
        elapsed = self.clock() - start
        self.router.report(backend, batch.model, rows, elapsed, ok=True, ticket=ticket)
        self.metrics.backend_latency.labels(backend.name, batch.model).observe(elapsed)
        self.metrics.batch_size.labels(backend.name, batch.model).observe(rows)
        if selection.predicted_s:
            self.metrics.prediction_ratio.labels(backend.name).observe(elapsed / selection.predicted_s)
        self.metrics.selections.labels(backend.name, batch.route.policy, selection.reason).inc()
        return Forwarded(backend.name, selection.reason, outputs, elapsed)

    def _failed(self, batch: Batch, selection: Selection, rows: int, elapsed: float, cause: Cause) -> None:
        backend = selection.backend
        self.router.report(backend, batch.model, rows, elapsed, ok=False, ticket=selection.ticket, cause=cause)
        self.metrics.hub_failures.labels(backend.name, cause).inc()


async def _first_success(*tasks: asyncio.Task[Forwarded]) -> Forwarded:
    """The first task to succeed; the others are cancelled. If all fail, the first failure."""
    pending = set(tasks)
    first_error: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    return task.result()
                first_error = first_error or task.exception()
        assert first_error is not None
        raise first_error
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
