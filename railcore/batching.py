"""Batch queues and the flush policy: pure, no I/O, time passed in by the caller.

One ``BatchQueue`` per batch key (model, version, routing constraints). The pipeline pushes each
admitted request, then asks ``decide(now, inflight, service_s)`` what to do: flush the first
``count`` requests now, or wait until a given time (or for the next arrival).

A batch is flushed when
  * it is full (``max_batch_size`` rows, never above the backend model's own maximum);
  * the pipeline is idle: fewer than ``max_inflight_batches`` batches of this key are in flight.
    An idle gateway adds no queueing delay; a busy one accumulates batches that grow with load.
    This is not a cap on batches in flight: the rules below send more;
  * it reaches the largest preferred batch size;
  * its earliest member's deadline slack runs out (deadline minus expected service time), because
    the batch carries the earliest deadline of its members;
  * its oldest member has waited ``max_queue_delay``.

Requests carry a ``shape`` key (None for models whose dims past the batch dim are fixed): a batch
never spans two shapes, since tensors that differ past the batch dim cannot be concatenated. A
flush takes the queue's front run of one shape; the rest wait for the next decision (which an idle
pipeline makes at once). Interleaved shapes therefore batch poorly, but stay in arrival order.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_inflight_batches: int = 2

    @property
    def preferred_flush_rows(self) -> int | None:
        fitting = [b for b in self.preferred_batch_sizes if b <= self.max_batch_size]
        return max(fitting) if fitting else None


@dataclass(slots=True)
class Pending(Generic[T]):
    item: T
    rows: int
    deadline: float
    enqueued: float
    shape: Hashable = None  # requests batch together only if equal (None: the model's dims are fixed)


class FlushReason(enum.StrEnum):
    """Why a batch was sent (the ``reason`` label of ``railgate_batches``)."""

    FULL = "full"
    IDLE = "idle"
    PREFERRED = "preferred"
    SLACK = "slack"
    DELAY = "delay"


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Flush:
    count: int  # the first ``count`` queued requests form the batch
    reason: FlushReason


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class Wait:
    until: float | None  # None: nothing queued, wait for an arrival


class BatchQueue(Generic[T]):
    """FIFO of requests waiting for one batch key, and the decision of when to send them."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._queue: deque[Pending[T]] = deque()
        self.rows = 0
        self._earliest_deadline = float("inf")
        self._mixed = False  # more than one shape queued: flushes stop where the shape changes

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Pending[T]]:
        return iter(self._queue)

    def push(self, item: T, rows: int, deadline: float, now: float, shape: Hashable = None) -> None:
        if self._queue and shape != self._queue[-1].shape:
            self._mixed = True
        self._queue.append(Pending(item, rows, deadline, now, shape))
        self.rows += rows
        self._earliest_deadline = min(self._earliest_deadline, deadline)

    def remove(self, predicate: Callable[[Pending[T]], bool], within: int | None = None) -> list[Pending[T]]:
        """Take out every request for which ``predicate`` holds (expired, or its client went away),
        among the first ``within`` (all by default). One pass; the predicate is asked once per request."""
        queue = self._queue
        removed: list[Pending[T]] = []
        kept: deque[Pending[T]] | None = None
        for index, pending in enumerate(queue if within is None else islice(queue, within)):
            if predicate(pending):
                if kept is None:  # the first one: those before it are kept
                    kept = deque(islice(queue, index))
                removed.append(pending)
            elif kept is not None:
                kept.append(pending)
        if kept is None:
            return removed
        if within is not None:
            kept.extend(islice(queue, within, None))
        self._queue = kept
        self._recount()
        return removed

    def expired(self, now: float) -> list[Pending[T]]:
        if now < self._earliest_deadline:
            return []
        return self.remove(lambda p: p.deadline <= now)

    def take(self, count: int) -> list[Pending[T]]:
        popleft = self._queue.popleft
        batch = [popleft() for _ in range(count)]
        if not self._queue:
            self.rows, self._earliest_deadline, self._mixed = 0, float("inf"), False
            return batch
        # Counted down from what was taken; the rest is walked only when the taken ones held the
        # earliest deadline or the queue held more than one shape.
        self.rows -= sum(p.rows for p in batch)
        earliest = self._earliest_deadline
        if any(p.deadline <= earliest for p in batch):
            self._earliest_deadline = min(p.deadline for p in self._queue)
        if self._mixed:
            self._mixed = len({p.shape for p in self._queue}) > 1
        return batch

    def _recount(self) -> None:
        self.rows = sum(p.rows for p in self._queue)
        self._earliest_deadline = min((p.deadline for p in self._queue), default=float("inf"))
        self._mixed = len({p.shape for p in self._queue}) > 1

    def _front_run(self) -> int:
        """How many requests, from the front, share the first one's shape (all, unless mixed)."""
        if not self._mixed:
            return len(self._queue)
        shape = self._queue[0].shape
        count = 0
        for pending in self._queue:
            if pending.shape != shape:
                break
            count += 1
        return count

    def _fitting(self, limit: int) -> int:
        """How many requests, from the front, of the first one's shape, fit in ``limit`` rows
        (always at least one)."""
        rows = count = 0
        shape = self._queue[0].shape if self._queue else None
        for pending in self._queue:
            if count and (rows + pending.rows > limit or pending.shape != shape):
                break
            rows += pending.rows
            count += 1
        return count

    def alone(self, rows: int, inflight: int) -> FlushReason | None:
        """Why a request of ``rows`` arriving now would be sent at once as a batch of its own, or None
        when it must queue: what ``decide`` says after its ``push``, for an empty queue only, asked
        without the push (the pipeline sends such a request without waking its lane's runner)."""
        if self._queue:
            return None
        if rows >= self.policy.max_batch_size:
            return FlushReason.FULL
        if inflight < self.policy.max_inflight_batches:
            return FlushReason.IDLE
        return None

    def decide(self, now: float, inflight: int, service_s: float) -> Flush | Wait:
        """What to do now, given the batches in flight and the expected service time of a batch."""
        if not self._queue:
            return Wait(None)
        policy = self.policy
        if self.rows >= policy.max_batch_size:
            return Flush(self._fitting(policy.max_batch_size), FlushReason.FULL)
        if inflight < policy.max_inflight_batches:
            return Flush(self._front_run(), FlushReason.IDLE)
        preferred = policy.preferred_flush_rows
        if preferred is not None and self.rows >= preferred:
            return Flush(self._fitting(preferred), FlushReason.PREFERRED)
        slack_at = self._earliest_deadline - service_s
        if now >= slack_at:
            return Flush(self._front_run(), FlushReason.SLACK)
        delay_at = self._queue[0].enqueued + policy.max_queue_delay_s
        if now >= delay_at:
            return Flush(self._front_run(), FlushReason.DELAY)
        return Wait(min(slack_at, delay_at))
