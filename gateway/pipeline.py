"""The request path after admission: batch queues per key, dispatch to a backend, split the outputs.

This is the asyncio shell around the pure ``BatchQueue`` policy and the router. Each batch key
has a lane: a queue, a runner task that applies the flush decision, and the count of its batches in
flight. A request that finds its lane's queue empty and a batch free to go is sent from its own call,
as the runner would send it (alone, at once): the runner wakes only for requests that must wait.
A lane with nothing queued, in flight or sent for ``batching.idle_lane_s`` is removed and its
runner returns: part of the key (the allowed regions) is the client's choice, so lanes must not
outlive their traffic. Every task here is owned by the pipeline and cancelled or awaited in ``close``.

Deadlines and flush timers are on the event loop's clock (asyncio's timers run on it). Queue time is
measured on ``clock``, the router's by default: high resolution, where uvloop's ``loop.time()``
moves in 1 ms steps, and virtual when the router's is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from gateway.config import Admission, Batching, Limits, Priority, Routing
from gateway.expiry import Expiry
from gateway.lanes import DEFAULT_ROUTE, Admitted, BatchResult, Lane, LaneKey, budget_class
from gateway.metrics import Metrics
from gateway.routing.forward import Batch, Forwarder
from gateway.routing.policy import Route
from gateway.routing.router import Router
from gateway.routing.state import batch_bucket
from gateway.statistics import Statistics
from gateway.tracing import BatchTrace, batch_trace
from railcore.batching import BatchPolicy, BatchQueue, Flush, FlushReason, Pending
from railcore.catalog import ModelInfo
from railcore.errors import (
    ClientGone,
    DeadlineExceeded,
    Draining,
    HubFailed,
    HubModelFailed,
    PredictedMiss,
    QueueFull,
    RailgateError,
    Shedding,
)
from railcore.protocol.types import InferRequest

log = logging.getLogger("railgate.pipeline")

# Concatenating more than this many bytes runs off the event loop.
_OFFLOAD_BYTES = 1 << 20
# uvloop's timers fire on a 1 ms clock, up to a step early: an idle lane within it of its time has had it.
_TIMER_STEP_S = 0.001
_GONE = "client went away before its batch was sent"


class Slot:
    """One request counted in ``Pipeline.active`` (admission's bound, the drain's wait) from its
    admission to its answer; ``release`` is idempotent, so every exit path may call it."""

    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline: Pipeline | None = pipeline

    def release(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline._release()


class Pipeline:
    def __init__(
        self,
        router: Router,
        batching: Batching,
        limits: Limits,
        metrics: Metrics,
        routing: Routing | None = None,
        admission: Admission | None = None,
        clock: Callable[[], float] | None = None,
        statistics: Statistics | None = None,
        tracer: Any = None,
    ) -> None:
        self.router = router
        self.tracer = tracer  # OpenTelemetry's, or None: tracing off (gateway/tracing.py)
        self.statistics = statistics or Statistics()
        self.batching = batching
        self.limits = limits
        self.metrics = metrics
        self.admission = a = admission or Admission()
        self.clock = clock or router.clock  # durations; deadlines are on the loop's clock
        self.active = 0  # requests admitted and not yet answered (the retry budget's base)
        self._idle = asyncio.Event()
        self._idle.set()
        self.forwarder = Forwarder(router, routing or router.config, metrics, lambda: self.active, self.clock)
        self.lanes: dict[LaneKey, Lane] = {}
        # The per-request lookup, by the same four values: a tuple is built and hashed several times
        # faster than a frozen dataclass, and every request looks its lane up.
        self._lane_index: dict[tuple[str, str, Route, int], Lane] = {}
        # Admitted requests at which each priority is shed (high only when the gateway is full).
        self._shed_at = {
            Priority.LOW: a.shed_low_at * a.max_active_requests,
            Priority.NORMAL: a.shed_normal_at * a.max_active_requests,
            Priority.HIGH: float(a.max_active_requests),
        }
        self._dispatches: set[asyncio.Task[None]] = set()
        self._expiry = Expiry()  # every waiting request's deadline, on one timer
        self._closing = False

    def _policy(self, info: ModelInfo) -> BatchPolicy:
        b = self.batching
        if info.max_batch_size <= 0:  # the model does not batch: one request at a time
            return BatchPolicy(1, 0.0, (), b.max_inflight_batches)
        return BatchPolicy(
            max_batch_size=min(b.max_batch_size, info.max_batch_size),
            max_queue_delay_s=b.max_queue_delay_ms / 1000,
            preferred_batch_sizes=b.preferred_batch_sizes or info.preferred_batch_sizes,
            max_inflight_batches=b.max_inflight_batches,
        )

    def _lane(self, info: ModelInfo, version: str, route: Route, budget_class: int) -> Lane:
        lane = self._lane_index.get((info.name, version, route, budget_class))
        if lane is None or lane.info is not info:  # first use, or the catalog changed
            old = lane
            if old is not None and old.runner is not None:
                old.runner.cancel()
            key = LaneKey(info.name, version, route, budget_class)
            loop = asyncio.get_running_loop()
            lane = Lane(key, info, BatchQueue(self._policy(info)), active_at=loop.time())
            lane.depth = self.metrics.queue_depth.labels(info.name)  # it reads 0 while nothing has had to queue
            lane.runner = loop.create_task(self._run(lane), name=f"lane-{info.name}")
            if old is not None:
                # Requests still queued on the old lane move over, in order.
                for pending in old.queue.take(len(old.queue)):
                    lane.queue.push(pending.item, pending.rows, pending.deadline, pending.enqueued, pending.shape)
            self.lanes[key] = self._lane_index[key._index()] = lane
        return lane

    async def submit(
        self,
        request: InferRequest,
        info: ModelInfo,
        rows: int,
        deadline: float,
        gone: Callable[[], bool],
        route: Route = DEFAULT_ROUTE,
        priority: Priority = Priority.NORMAL,
        slot: Slot | None = None,
        trace: Any = None,
    ) -> BatchResult:
        """Queue a validated request; return its share of the batch it ran in. ``slot``: the request
        was counted at admission (``hold``), before its body was read; it is released here either way.
        ``trace``: the request's span (tracing on), the parent of its queue wait and batch."""
        held = slot if slot is not None else self.hold(priority)
        try:
            return await self._queued(request, info, rows, deadline, gone, route, trace)
        finally:
            held.release()

    def hold(self, priority: Priority) -> Slot:
        """Count a request as in progress from its admission, before its body is read, until the slot
        is released; refused at once (shed by priority) when the gateway is full or shutting down."""
        if self._closing:
            raise Draining("gateway is shutting down")
        self._admit(priority)
        if not self.active:
            self._idle.clear()
        self.active += 1
        return Slot(self)

    def _release(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def _queued(
        self,
        request: InferRequest,
        info: ModelInfo,
        rows: int,
        deadline: float,
        gone: Callable[[], bool],
        route: Route,
        trace: Any = None,
    ) -> BatchResult:
        if self._closing:  # a slot taken before the body was read may outlive the pipeline
            raise Draining("gateway is shutting down")
        loop = asyncio.get_running_loop()
        lane = self._lane(info, request.version, route, budget_class(deadline - loop.time()))
        if len(lane.queue) >= self.limits.max_queued_requests:
            raise QueueFull(
                f"queue for model {info.name!r} is full ({len(lane.queue)} requests)", headers={"Retry-After": "1"}
            )
        if self.admission.refuse_predicted_misses:
            self._refuse_predicted_miss(lane, rows, deadline - loop.time())
        admitted = Admitted(request, loop.create_future(), gone, self.clock())
        if trace is not None:
            admitted.trace, admitted.queued_ns = trace, time.time_ns()
        now, shape = loop.time(), _batch_shape(info, request)
        alone = lane.queue.alone(rows, lane.inflight)
        if alone is None:
            lane.queue.push(admitted, rows, deadline, now, shape)
            lane.depth.inc()
            lane.wakeup.set()
        elif gone():  # as the runner drops a client that went away before its batch is sent
            raise ClientGone(_GONE)
        else:  # nothing queued and a batch may go now: sent from here, as the runner would send it
            self._start(lane, [Pending(admitted, rows, deadline, now, shape)], alone)
        # The future fails at the deadline (one loop timer for every request's, gateway/expiry.py; an
        # ``asyncio.timeout`` would cancel and uncancel the whole task, at several times the cost).
        future = admitted.future
        self._expiry.add(deadline, future, info.name)
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()  # the runner drops it before its batch is sent

    async def wait_idle(self) -> None:
        """Return once no accepted request is in progress (the drain awaits this)."""
        await self._idle.wait()

    def _admit(self, priority: Priority) -> None:
        """Refuse at once when the gateway is full; lower priorities are shed first."""
        if self.active >= self._shed_at.get(priority, self._shed_at[Priority.HIGH]):
            self.metrics.shed.labels(priority).inc()
            raise Shedding(
                f"gateway is at capacity ({self.active} requests in progress); {priority} priority is shed first",
                headers={"Retry-After": "1"},
            )

    def _refuse_predicted_miss(self, lane: Lane, rows: int, budget_s: float) -> None:
        """A request that would wait in the queue past its budget is refused now, not answered 504 later."""
        batches_ahead = (lane.queue.rows + rows - 1) // max(lane.queue.policy.max_batch_size, 1)
        if batches_ahead <= 0:  # it goes in the next batch: no wait to predict
            return
        service = self._service_estimate(lane)
        if service <= 0:
            return
        waiting = batches_ahead * service / max(self.batching.max_inflight_batches, 1)
        if waiting + service > budget_s:
            self.metrics.shed.labels("predicted_miss").inc()
            raise PredictedMiss(
                f"predicted wait {1000 * waiting:.0f} ms plus service {1000 * service:.0f} ms exceeds the "
                f"budget of {1000 * budget_s:.0f} ms for model {lane.info.name!r}",
                headers={"Retry-After": "1"},
            )

    async def _run(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        queue = lane.queue
        while True:
            now = loop.time()
            for pending in queue.expired(now):
                self._fail(pending, DeadlineExceeded(f"latency budget ran out in the queue for {lane.info.name!r}"))
            decision = queue.decide(now, lane.inflight, self._service_estimate(lane))
            if isinstance(decision, Flush):
                # Only the members of this batch: the others are looked at when their own batch is sent
                # (or expire), so a flush costs its batch's size, not the queue's.
                dropped = queue.remove(_abandoned, within=decision.count)
                if dropped:  # clients that went away never reach a backend; decide again
                    for pending in dropped:
                        self._fail(pending, ClientGone(_GONE))
                    continue
                batch = queue.take(decision.count)
                lane.depth.dec(len(batch))
                self._start(lane, batch, decision.reason)
                continue
            lane.wakeup.clear()
            if decision.until is None:  # nothing queued: wait for an arrival, or go once idle
                idle_s = self.batching.idle_lane_s
                quiet_s = now - lane.active_at
                if not lane.inflight and quiet_s >= idle_s - _TIMER_STEP_S:
                    self._evict(lane)
                    return
                try:  # with a batch in flight its end restarts the count, so look again after a while
                    async with asyncio.timeout(idle_s if lane.inflight else idle_s - quiet_s):
                        await lane.wakeup.wait()
                except TimeoutError:
                    pass
                continue
            timer = loop.call_at(decision.until, lane.wakeup.set) if decision.until is not None else None
            try:
                await lane.wakeup.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    def _start(self, lane: Lane, batch: list[Pending[Admitted]], reason: FlushReason) -> None:
        """Send ``batch`` (flushed for ``reason``) in a task of its own, counted in flight on ``lane``."""
        self.metrics.batches.labels(lane.info.name, reason).inc()
        lane.inflight += 1
        loop = asyncio.get_running_loop()
        lane.active_at = loop.time()
        task = loop.create_task(self._dispatch(lane, batch))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    def _evict(self, lane: Lane) -> None:
        """Forget an idle lane; its runner returns. ``submit`` looks a lane up and queues on it with
        no await in between, so no request can land on a lane after this."""
        key = lane.key
        if self.lanes.get(key) is lane:
            del self.lanes[key]
            del self._lane_index[key._index()]

    def _service_estimate(self, lane: Lane) -> float:
        bucket = batch_bucket(max(lane.queue.rows, 1))
        cached = lane.estimates.get(bucket)
        if cached is None:
            model, route = lane.key.model, lane.key.route
            estimates = [self.router.predicted_s(b, model, bucket) for b in self.router.candidates(model, route)]
            known = [e for e in estimates if e is not None]
            cached = lane.estimates[bucket] = min(known) if known else 0.0
        return cached

    def _fail(self, pending: Pending[Admitted], error: RailgateError) -> None:
        self.metrics.queue_depth.labels(pending.item.request.model).dec()
        if not pending.item.future.done():
            pending.item.future.set_exception(error)

    async def _dispatch(self, lane: Lane, batch: list[Pending[Admitted]]) -> None:
        start = self.clock()
        traced = None
        if self.tracer is not None:
            traced = batch_trace(self.tracer, lane.info.name, lane.key.version, batch, sum(p.rows for p in batch))
        try:
            try:
                await self._send(lane, batch, start, traced)
            except HubModelFailed:
                if len(batch) == 1:
                    raise
                # The hub ran the model and it failed on the batch's data: one member's input (a
                # string its model cannot parse) must not fail the others, so each runs alone.
                log.info("event=batch_split model=%s members=%d", lane.info.name, len(batch))
                await asyncio.gather(*(self._alone(lane, pending, start, traced) for pending in batch))
        except RailgateError as exc:
            _fail_all(batch, exc)
            if traced is not None:
                traced.failed(exc)
        except Exception as exc:
            log.exception("event=dispatch_failed model=%s", lane.info.name)
            _fail_all(batch, HubFailed(f"batch for {lane.info.name!r} failed: {exc}"))
            if traced is not None:
                traced.failed(exc)
        finally:
            lane.inflight -= 1
            lane.estimates.clear()
            lane.active_at = asyncio.get_running_loop().time()
            if lane.queue:  # an empty lane's runner needs no wake: it looks at its idle time by itself
                lane.wakeup.set()
            if traced is not None:
                traced.end(sys.exc_info()[1])

    async def _alone(self, lane: Lane, pending: Pending[Admitted], start: float, traced: BatchTrace | None) -> None:
        try:
            await self._send(lane, [pending], start, traced)
        except RailgateError as exc:
            _fail_all([pending], exc)

    async def _send(
        self, lane: Lane, batch: list[Pending[Admitted]], start: float, traced: BatchTrace | None = None
    ) -> None:
        """Send ``batch`` as one call and answer each member with its rows of the outputs."""
        info, key = lane.info, lane.key
        rows = sum(p.rows for p in batch)
        inputs = await self._gather(batch)
        forwarded = await self.forwarder.forward(
            Batch(
                key.model,
                key.version,
                key.route,
                inputs,
                _union_outputs(info, batch),
                rows if info.max_batch_size else 0,
                # Routed for its tightest member; cut off at its loosest. A tight member whose
                # deadline passes is answered 504 by its own timeout while the others still wait.
                deadline=max(p.deadline for p in batch),
                route_deadline=min(p.deadline for p in batch),
                trace=traced,
            )
        )
        self.statistics.executed(info.name, key.version or info.versions[-1], rows, forwarded.backend_s)
        offset = 0
        queue_wait = self.metrics.queue_wait.labels(info.name)  # once per batch, not per member
        for pending in batch:
            if info.max_batch_size:
                share = {k: v[offset : offset + pending.rows] for k, v in forwarded.outputs.items()}
            else:
                share = forwarded.outputs
            offset += pending.rows
            if not pending.item.future.done():
                queue_s = start - pending.item.queued_at
                queue_wait.observe(queue_s)
                result = BatchResult(share, forwarded.backend, rows, forwarded.reason, queue_s, forwarded.backend_s)
                pending.item.future.set_result(result)

    async def _gather(self, batch: list[Pending[Admitted]]) -> dict[str, np.ndarray]:
        """The batch's inputs, one array per input name, requests stacked along the batch dim."""
        first = batch[0].item.request.inputs
        if len(batch) == 1:
            return {t.name: t.data for t in first}
        columns: dict[str, list[np.ndarray]] = {t.name: [] for t in first}
        size = 0
        for pending in batch:
            for tensor in pending.item.request.inputs:
                columns[tensor.name].append(tensor.data)
                size += tensor.data.nbytes
        if size <= _OFFLOAD_BYTES:
            return {name: np.concatenate(arrays) for name, arrays in columns.items()}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: {n: np.concatenate(a) for n, a in columns.items()})

    async def close(self, grace_s: float = 5.0) -> None:
        """Fail what is queued, let batches in flight finish (up to ``grace_s``), stop the runners."""
        self._closing = True
        for lane in self.lanes.values():
            if lane.runner is not None:
                lane.runner.cancel()
            for pending in lane.queue.take(len(lane.queue)):
                self._fail(pending, Draining("gateway is shutting down"))
        runners = [lane.runner for lane in self.lanes.values() if lane.runner is not None]
        await asyncio.gather(*runners, return_exceptions=True)
        if self._dispatches:
            _, unfinished = await asyncio.wait(set(self._dispatches), timeout=grace_s)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        self._expiry.close()


def _batch_shape(info: ModelInfo, request: InferRequest) -> Hashable:
    """The request's shapes past the batch dim where the model has variable dims there, else None:
    requests of different shapes cannot be concatenated, so the queue never batches them together."""
    if info.max_batch_size <= 0 or info.fixed_dims:
        return None
    return tuple(sorted((t.name, t.shape[1:]) for t in request.inputs))


def _union_outputs(info: ModelInfo, batch: list[Pending[Admitted]]) -> list[str]:
    """The outputs the batch must ask for: all of them if any member asked for all."""
    wanted: set[str] = set()
    for pending in batch:
        requested = pending.item.request.outputs
        if not requested:
            return [o.name for o in info.outputs]
        wanted.update(o.name for o in requested)
    return [o.name for o in info.outputs if o.name in wanted]


def _abandoned(pending: Pending[Admitted]) -> bool:
    return pending.item.abandoned()


def _fail_all(batch: list[Pending[Admitted]], error: RailgateError) -> None:
    for pending in batch:
        if not pending.item.future.done():
            pending.item.future.set_exception(error)
