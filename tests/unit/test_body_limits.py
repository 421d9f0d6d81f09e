"""Body floods, the pure parts: a request counts as in progress from admission (before its body is
read), the reading budget refuses rather than queues, and JSON/msgpack bodies are refused by counts
taken before they are materialised."""

from __future__ import annotations

import msgpack
import pytest

from gateway.config import Admission, Priority
from gateway.fronts.body import BodyLimits, ReadingBudget
from railcore.errors import PayloadTooLarge, Shedding
from railcore.protocol import json_codec, msgpack_codec
from tests.fakes import ScriptedBackend, answer, virtual_time
from tests.unit.test_pipeline_admission import pipeline_over, submit


@virtual_time
async def test_a_held_slot_counts_as_in_progress_until_released_once() -> None:
    pipe = pipeline_over(ScriptedBackend("hub", answer()), admission=Admission(max_active_requests=2))
    first, second = pipe.hold(Priority.HIGH), pipe.hold(Priority.HIGH)
    assert pipe.active == 2
    with pytest.raises(Shedding):
        pipe.hold(Priority.HIGH)  # bodies still being read fill the gateway too
    first.release()
    first.release()
    assert pipe.active == 1
    await submit(pipe, slot=second)  # the submit releases the slot it was given, and takes no other
    assert pipe.active == 0
    await pipe.wait_idle()
    await pipe.close()


def test_the_reading_budget_refuses_what_does_not_fit_and_takes_it_back():
    budget = ReadingBudget(100)
    assert budget.try_take(60) and not budget.try_take(41) and budget.try_take(40)
    budget.give(60)
    assert budget.held == 40 and budget.try_take(60)


@pytest.mark.parametrize(
    ("content_type", "header_length", "setting"),
    [
        ("application/json", None, "limits.max_json_body_bytes"),
        (None, None, "limits.max_json_body_bytes"),
        ("application/octet-stream", 120, "limits.max_body_bytes"),
        ("application/msgpack", None, "limits.max_body_bytes"),
    ],
)
def test_json_bodies_get_the_smaller_limit(content_type, header_length, setting):
    limits = BodyLimits(max_body_bytes=64 << 20, max_json_body_bytes=8 << 20, timeout_s=30)
    assert limits.for_request(content_type, header_length)[1] == setting


def test_a_json_body_of_empty_lists_is_refused_before_it_is_parsed():
    body = b"[" + b"[]," * 1_000_000 + b"[]]"  # 3 MB that json.loads would make ~60 MB of lists from
    with pytest.raises(PayloadTooLarge, match="as Python objects"):
        json_codec.loads(body, max_python_bytes=16 * len(body))


def test_a_json_body_of_numbers_is_within_its_bound():
    body = b"[" + b"1.0," * 1_000_000 + b"1.0]"
    assert len(json_codec.loads(body, max_python_bytes=16 * len(body))) == 1_000_001


def test_a_msgpack_body_of_nested_empty_arrays_is_refused_while_unpacked():
    body = msgpack.packb([[[]] * 1000] * 1000)  # 1 MB of bytes, a million lists
    with pytest.raises(PayloadTooLarge, match="array and map entries"):
        msgpack_codec.loads(body, max_items=100_000)
    assert msgpack_codec.loads(msgpack.packb({"inputs": [{"shape": [1, 64]}]}), max_items=100) is not None


def _entries(document: object) -> int:
    """What loads' count charges a document: each array or map's length plus one, all together."""
    if isinstance(document, list):
        return len(document) + 1 + sum(_entries(v) for v in document)
    if isinstance(document, dict):
        return len(document) + 1 + sum(_entries(k) + _entries(v) for k, v in document.items())
    return 0


def test_a_msgpack_body_can_never_count_more_than_twice_its_bytes():
    """Why loads counts nothing for a body of at most max_items / 2 bytes: the count cannot pass the limit.
    The densest documents there are (empty containers in containers) and random ones, all within 2x."""
    import random

    dense = [[[]] * 1000] * 1000, [[] for _ in range(5000)], [{} for _ in range(5000)], {i: [] for i in range(5000)}
    nested: list[object] = []
    for _ in range(200):
        nested = [nested]
    rng = random.Random(7)

    def build(depth: int) -> object:
        kind = rng.random()
        if depth > 4 or kind < 0.3:
            return rng.choice([0, 1.5, "a", b"", None, True])
        if kind < 0.65:
            return [build(depth + 1) for _ in range(rng.randrange(6))]
        return {str(i): build(depth + 1) for i in range(rng.randrange(6))}

    for document in [*dense, nested, *(build(0) for _ in range(300))]:
        assert _entries(document) <= 2 * len(msgpack.packb(document))
