"""A batch never spans two shapes: requests whose tensors differ past the batch dim (a model with
variable dims) cannot be concatenated, so a flush stops where the queue's shape changes."""

from __future__ import annotations

import pytest

from railcore.batching import BatchPolicy, BatchQueue, Flush

POLICY = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002, preferred_batch_sizes=(4,), max_inflight_batches=1)
FAR = 100.0


def shaped_queue(*shapes: str, policy: BatchPolicy = POLICY) -> BatchQueue[int]:
    q: BatchQueue[int] = BatchQueue(policy)
    for i, shape in enumerate(shapes):
        q.push(i, 1, FAR, 0.0, shape)
    return q


@pytest.mark.parametrize("inflight", [0, 1])
def test_a_batch_never_spans_two_shapes(inflight: int) -> None:
    q = shaped_queue("a", "a", "b", "a")
    decision = q.decide(now=1.0, inflight=inflight, service_s=0.0)  # idle, or past the queue delay
    assert isinstance(decision, Flush) and decision.count == 2
    assert [p.item for p in q.take(decision.count)] == [0, 1]
    assert q.decide(now=1.0, inflight=0, service_s=0.0) == Flush(1, "idle")


def test_a_full_or_preferred_flush_stops_where_the_shape_changes() -> None:
    assert shaped_queue(*"aaabbbbbb").decide(now=0.0, inflight=1, service_s=0.0) == Flush(3, "full")
    assert shaped_queue(*"aab", "b").decide(now=0.0, inflight=1, service_s=0.0) == Flush(2, "preferred")


def test_one_shape_batches_as_if_unshaped() -> None:
    assert shaped_queue(*"ccccc").decide(now=0.0, inflight=1, service_s=0.0) == Flush(4, "preferred")
    q = shaped_queue("a", "b", "b")
    q.take(1)
    assert q.decide(now=0.0, inflight=0, service_s=0.0) == Flush(2, "idle")
