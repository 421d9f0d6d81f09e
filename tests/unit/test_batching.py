"""The flush policy, under a fake clock: times are plain numbers passed in."""

from __future__ import annotations

import pytest

from railcore.batching import BatchPolicy, BatchQueue, Flush, Wait

POLICY = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002, preferred_batch_sizes=(4,), max_inflight_batches=1)
FAR = 100.0  # a deadline nobody reaches in these tests


def queue_with(*rows: int, now: float = 0.0, deadline: float = FAR, policy: BatchPolicy = POLICY) -> BatchQueue[int]:
    q: BatchQueue[int] = BatchQueue(policy)
    for i, r in enumerate(rows):
        q.push(i, r, deadline, now)
    return q


def test_empty_queue_waits_for_an_arrival() -> None:
    assert queue_with().decide(now=0.0, inflight=0, service_s=0.0) == Wait(None)


def test_idle_pipeline_sends_at_once_without_queueing_delay() -> None:
    assert queue_with(1).decide(now=0.0, inflight=0, service_s=0.0) == Flush(1, "idle")


def test_busy_pipeline_accumulates_until_the_queue_delay() -> None:
    q = queue_with(1, 1)
    assert q.decide(now=0.0, inflight=1, service_s=0.0) == Wait(0.002)
    assert q.decide(now=0.002, inflight=1, service_s=0.0) == Flush(2, "delay")


def test_full_batch_flushes_even_when_busy_and_never_exceeds_max() -> None:
    q = queue_with(3, 3, 3)
    decision = q.decide(now=0.0, inflight=5, service_s=0.0)
    assert decision == Flush(2, "full")
    assert sum(p.rows for p in q.take(decision.count)) <= POLICY.max_batch_size
    assert q.rows == 3


def test_preferred_batch_size_flushes_when_reached() -> None:
    q = queue_with(1, 1, 1, 1, 1)
    assert q.decide(now=0.0, inflight=1, service_s=0.0) == Flush(4, "preferred")


def test_deadline_slack_flushes_early() -> None:
    policy = BatchPolicy(8, max_queue_delay_s=1.0, max_inflight_batches=1)
    q = queue_with(1, deadline=0.5, policy=policy)
    # service takes 0.25 s: at t=0.25 the slack is gone although the 1 s queue delay is not.
    assert q.decide(now=0.0, inflight=1, service_s=0.25) == Wait(0.25)
    assert q.decide(now=0.25, inflight=1, service_s=0.25) == Flush(1, "slack")


def test_batch_carries_the_earliest_member_deadline() -> None:
    q: BatchQueue[str] = BatchQueue(POLICY)
    q.push("late", 1, deadline=1.0, now=0.0)
    q.push("early", 1, deadline=0.004, now=0.0)
    assert q.decide(now=0.0, inflight=1, service_s=0.003) == Wait(pytest.approx(0.001))


def test_expired_requests_leave_the_queue_and_are_never_flushed() -> None:
    q: BatchQueue[str] = BatchQueue(POLICY)
    q.push("expired", 1, deadline=0.001, now=0.0)
    q.push("alive", 1, deadline=1.0, now=0.0)
    assert [p.item for p in q.expired(now=0.001)] == ["expired"]
    assert [p.item for p in q] == ["alive"] and q.rows == 1
    assert q.expired(now=0.002) == []


def test_removed_requests_free_their_rows() -> None:
    q = queue_with(2, 3, 1)
    gone = q.remove(lambda p: p.item == 1)
    assert [p.item for p in gone] == [1]
    assert q.rows == 3 and len(q) == 2


def test_a_request_larger_than_the_rest_of_the_batch_waits_for_the_next() -> None:
    q = queue_with(6, 4)
    assert q.decide(now=0.0, inflight=9, service_s=0.0) == Flush(1, "full")


@pytest.mark.parametrize("preferred", [(), (16,)])
def test_preferred_sizes_above_the_max_are_ignored(preferred: tuple[int, ...]) -> None:
    policy = BatchPolicy(8, 0.002, preferred, 1)
    assert policy.preferred_flush_rows is None


def test_remove_within_looks_only_at_the_front_and_keeps_the_order() -> None:
    q = queue_with(1, 1, 1, 1, 1)
    gone = q.remove(lambda p: p.item in (1, 3), within=2)
    assert [p.item for p in gone] == [1]
    assert [p.item for p in q] == [0, 2, 3, 4] and q.rows == 4


def test_remove_asks_the_predicate_once_per_request() -> None:
    q = queue_with(1, 1, 1)
    asked: list[int] = []
    q.remove(lambda p: asked.append(p.item) or p.item == 2)
    assert asked == [0, 1, 2]


def test_take_leaves_rows_deadline_and_shapes_as_a_full_recount_would() -> None:
    q: BatchQueue[int] = BatchQueue(BatchPolicy(8, 100.0, (), 1))
    for i, (rows, deadline, shape) in enumerate([(2, 5.0, "a"), (1, 1.0, "a"), (3, 9.0, "b"), (1, 7.0, "b")]):
        q.push(i, rows, deadline, 0.0, shape)
    q.take(2)  # the earliest deadline (1.0) and every "a" leave
    assert q.rows == 4
    assert q.decide(now=6.5, inflight=9, service_s=0.0) == Wait(7.0)  # the earliest left is 7.0, not 1.0
    q.push(9, 1, 8.0, 0.0, "b")
    assert q._fitting(99) == 3  # one shape left: the whole queue batches together


@pytest.mark.parametrize("rows", [1, 3, 8, 9])
@pytest.mark.parametrize("inflight", [0, 1, 2])
@pytest.mark.parametrize("queued", [(), (1,)])
def test_alone_says_what_decide_would_after_the_push(rows: int, inflight: int, queued: tuple[int, ...]) -> None:
    """The pipeline sends a request ``alone`` names without queueing it: that must be exactly the
    batch ``decide`` would flush at once after the push, and never a request that must wait."""
    q = queue_with(*queued)
    reason = q.alone(rows, inflight)
    q.push(99, rows, FAR, 0.0)
    decision = q.decide(now=0.0, inflight=inflight, service_s=0.0)
    if reason is not None:
        assert decision == Flush(1, reason)
    else:
        assert queued or decision != Flush(1, "idle")
    assert (reason is None) == (bool(queued) or (rows < POLICY.max_batch_size and inflight >= 1))
