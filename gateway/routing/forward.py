"""Sending one batch: the chosen backend, failover to the next-best, and optional hedging.

A batch whose hub fails is retried on the next-best allowed backend while its deadline allows and
the retry budget has room (Envoy's: concurrent retries <= ``retry_ratio`` of active requests, at
least ``min_retry_concurrency``). With hedging on, a batch whose hub has not answered by its
predicted p95 is also sent to the next-best backend; the first answer wins and the other call is
cancelled. Over gRPC Triton cancels the loser's work; over HTTP closing the connection cannot stop
a request Triton already queued, so the loser's compute is wasted. Hedges spend the same budget as
retries. The deadline shrinks across retries and hedges and never resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.config import Routing
from gateway.metrics import Metrics
from gateway.routing.policy import Route
from gateway.routing.router import Router, Selection
from railcore.errors import DeadlineExceeded, HubFailed, NoBackend

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


@dataclass(frozen=True, slots=True)
class Forwarded:
    backend: str
    reason: str
    outputs: dict[str, np.ndarray]
    backend_s: float


@dataclass(frozen=True, slots=True)
class Batch:
    model: str
    version: str
    route: Route
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    rows: int  # 0 for a model that does not batch
    deadline: float  # the latest member's: no hub call outlives it
    route_deadline: float  # the earliest member's: the hub chosen must fit it

    def budget_s(self, now: float) -> float:
        """The budget a hub must fit: the earliest member's, or, once that member has been
        answered 504 by its own timeout, what is left for the others."""
        remaining = self.route_deadline - now
        return remaining if remaining > 0 else self.deadline - now


class Forwarder:
    def __init__(self, router: Router, config: Routing, metrics: Metrics, active: Callable[[], int]) -> None:
        self.router = router
        self.config = config
        self.metrics = metrics
        self.active = active
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
                    selection = Selection(selection.backend, f"failover: {selection.reason}", selection.predicted_s)
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
                    log.info("event=failover model=%s from=%s error=%s", batch.model, selection.backend.name, exc)
        finally:
            if holding:
                self.budget.release()

    async def _attempt(self, batch: Batch, first: Selection, tried: set[str]) -> Forwarded:
        hedge_after = self._hedge_delay(first, batch)
        if hedge_after is None:
            return await self._call(batch, first)
        loop = asyncio.get_running_loop()
        primary = loop.create_task(self._call(batch, first))
        try:
            done, _ = await asyncio.wait({primary}, timeout=hedge_after)
            if done or not self.budget.try_acquire(self.active()):
                return await primary
            try:
                try:
                    second = self.router.choose(
                        batch.model, batch.budget_s(loop.time()), batch.route, max(batch.rows, 1), frozenset(tried)
                    )
                except NoBackend:
                    return await primary
                tried.add(second.backend.name)
                self.metrics.hedges.labels(second.backend.name).inc()
                hedge = loop.create_task(self._call(batch, Selection(second.backend, f"hedge: {second.reason}", None)))
                return await _first_success(primary, hedge)
            finally:
                self.budget.release()
        finally:
            if not primary.done():
                primary.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await primary

    def _hedge_delay(self, selection: Selection, batch: Batch) -> float | None:
        if not self.config.hedge or selection.backend.kind != "hub":
            return None
        state = self.router.state[selection.backend.name].models.get(batch.model)
        p95 = state.total.p95 if state else None
        return None if p95 is None else p95 * self.config.hedge_factor

    async def _call(self, batch: Batch, selection: Selection) -> Forwarded:
        backend = selection.backend
        loop = asyncio.get_running_loop()
        start = loop.time()
        rows = max(batch.rows, 1)
        self.metrics.inflight.labels(backend.name).inc()
        try:
            outputs = await backend.infer(batch.model, batch.version, batch.inputs, batch.outputs, batch.deadline)
            if batch.rows:
                short = [k for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != batch.rows]
                if short:
                    raise HubFailed(f"{backend.name} returned output {short[0]!r} without {batch.rows} rows")
        except HubFailed as exc:
            self.router.report(backend, batch.model, rows, loop.time() - start, ok=False)
            exc.headers.setdefault("X-Served-By", backend.name)
            exc.headers.setdefault("X-Route-Reason", selection.reason)
            raise
        except DeadlineExceeded as exc:
            exc.headers.setdefault("X-Served-By", backend.name)
            exc.headers.setdefault("X-Route-Reason", selection.reason)
            # A timeout counts against the hub only if it had longer than its own predicted p95:
            # a budget tighter than the backbone is the request's problem, not the hub's.
            state = self.router.state[backend.name].models.get(batch.model)
            p95 = state.total.p95 if state else None
            if p95 is None or loop.time() - start > p95:
                self.router.report(backend, batch.model, rows, loop.time() - start, ok=False)
            raise
        finally:
            self.metrics.inflight.labels(backend.name).dec()
        elapsed = loop.time() - start
        self.router.report(backend, batch.model, rows, elapsed, ok=True)
        self.metrics.backend_latency.labels(backend.name, batch.model).observe(elapsed)
        self.metrics.batch_size.labels(backend.name, batch.model).observe(rows)
        if selection.predicted_s:
            self.metrics.prediction_ratio.labels(backend.name).observe(elapsed / selection.predicted_s)
        self.metrics.selections.labels(backend.name, batch.route.policy, selection.reason).inc()
        return Forwarded(backend.name, selection.reason, outputs, elapsed)


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
