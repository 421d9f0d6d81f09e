"""Every in-progress request's deadline on one loop timer.

A request waiting for its batch's answer is failed with ``DeadlineExceeded`` at its deadline, whatever
its batch is doing (queued, in flight, failing over). One uvloop timer per request costs ~2 us to
arm and cancel (a libuv handle allocated, heap-inserted, closed): on the order of the rest of the
per-request bookkeeping. Here the deadlines sit in a heap with one timer armed at the earliest; a
request that is answered is not removed (its entry is skipped when its deadline comes), and the heap
is compacted when it holds more than twice what was live at the last compaction, so its size stays
bounded by the requests in progress.

Deadlines are on the event loop's clock, as ``loop.call_at``'s: the timer fires when the earliest
deadline is due, and every entry due by then (the fired deadline, or the loop's time if later) fails.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Any

from railcore.errors import DeadlineExceeded

_COMPACT_MIN = 1024  # entries before the first compaction: a small heap is never worth filtering


class Expiry:
    """Fails each added future with ``DeadlineExceeded`` at its deadline unless it is done by then."""

    __slots__ = ("_armed_at", "_compact_at", "_heap", "_seq", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Any], str]] = []
        self._seq = itertools.count()  # ties broken by arrival: futures do not compare
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._compact_at = _COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, future: asyncio.Future[Any], model: str) -> None:
        """Fail ``future`` at ``deadline`` (loop clock) if it is not done by then; ``model`` names it."""
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._seq), future, model))
        if deadline < self._armed_at:
            self._arm(deadline)
        if len(heap) > self._compact_at:
            self._compact()

    def close(self) -> None:
        """Stop the timer and forget every entry (their futures are left as they are)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = None, math.inf
        self._heap.clear()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire, deadline)
        self._armed_at = deadline

    def _fire(self, due: float) -> None:
        self._timer, self._armed_at = None, math.inf
        until = max(due, asyncio.get_running_loop().time())
        heap = self._heap
        while heap and heap[0][0] <= until:
            _, _, future, model = heapq.heappop(heap)
            if not future.done():
                future.set_exception(DeadlineExceeded(f"latency budget ran out for model {model!r}"))
        if heap:
            self._arm(heap[0][0])

    def _compact(self) -> None:
        heap = [entry for entry in self._heap if not entry[2].done()]
        heapq.heapify(heap)
        self._heap = heap
        self._compact_at = max(_COMPACT_MIN, 2 * len(heap))
