"""A binary request's JSON header is decoded once per distinct header (railcore/protocol/codec.py's plans):
each request with the same header still gets its own tensors, dicts and errors, under its own limits."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol import DecodeLimits, codec, decode_request

LIMITS = DecodeLimits()


def header(**extra: Any) -> bytes:
    spec = {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16, "tag": "t"}}
    return json.dumps({"inputs": [spec], "outputs": [{"name": "y", "parameters": {"k": 1}}], **extra}).encode()


def decode(head: bytes, raw: bytes, limits: DecodeLimits = LIMITS) -> Any:
    return decode_request(head + raw, content_type=None, header_length=len(head), model="m", version="", limits=limits)


def floats(*values: float) -> bytes:
    return np.array(values, dtype=np.float32).tobytes()


def test_requests_with_the_same_header_get_their_own_tensor_bytes() -> None:
    head = header(parameters={"timeout": 5})
    first = decode(head, floats(1, 2, 3, 4))
    second = decode(head, floats(5, 6, 7, 8))
    assert head in codec._PLANS  # the second request was decoded from the plan
    assert first.inputs[0].data.tolist() == [[1, 2, 3, 4]]
    assert second.inputs[0].data.tolist() == [[5, 6, 7, 8]]
    assert second.inputs[0].parameters == {"tag": "t"}  # binary_data_size stays with its body
    assert second.parameters == {"timeout": 5}
    assert [(o.name, o.parameters) for o in second.outputs] == [("y", {"k": 1})]


def test_a_request_changing_its_dicts_does_not_change_the_next_one() -> None:
    head = header(parameters={"priority": 1})
    for _ in range(2):  # the first request makes the plan, the second is decoded from it
        changed = decode(head, floats(1, 2, 3, 4))
        changed.parameters["priority"] = 99
        changed.inputs[0].parameters["tag"] = "changed"
        changed.outputs[0].parameters["k"] = 2
    after = decode(head, floats(1, 2, 3, 4))
    assert after.parameters == {"priority": 1}
    assert after.inputs[0].parameters == {"tag": "t"}
    assert after.outputs[0].parameters == {"k": 1}


def test_a_planned_header_with_a_short_or_long_body_is_refused_as_the_first_was() -> None:
    head = header(id="short")
    decode(head, floats(1, 2, 3, 4))
    with pytest.raises(BadRequest, match=r"input 'x': binary_data_size 16 runs past the end of the body"):
        decode(head, floats(1, 2))
    with pytest.raises(BadRequest, match="4 bytes of binary data follow the last tensor"):
        decode(head, floats(1, 2, 3, 4, 5))


def test_a_plan_made_under_one_set_of_limits_is_not_used_under_another() -> None:
    head = header(id="limits")
    decode(head, floats(1, 2, 3, 4))
    with pytest.raises(PayloadTooLarge, match="holds 4 elements; the limit is 2"):
        decode(head, floats(1, 2, 3, 4), DecodeLimits(max_elements=2))


def test_headers_with_inline_data_are_not_kept_and_the_plans_stay_bounded() -> None:
    inline = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()
    decode(inline, b"")
    assert inline not in codec._PLANS
    for i in range(codec._PLANS_MAX * 2):
        decode(header(id=f"r{i}"), floats(1, 2, 3, 4))  # a client's unique ids: every header differs
        assert len(codec._PLANS) <= codec._PLANS_MAX
