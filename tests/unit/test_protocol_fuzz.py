"""Properties of the codecs: no body makes the decoder fail other than with a 400/413, and tensors round-trip."""

from __future__ import annotations

import json
import math
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol import (
    DTYPES,
    DecodeLimits,
    Encoding,
    InferRequest,
    InferResponse,
    Tensor,
    decode_request,
    encode_response,
)
from tests.unit.test_protocol import (
    assert_same,
    client_result,
    from_client_array,
    length_prefixed,
    msgpack_output_array,
    msgpack_request,
    triton_request,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = DecodeLimits(max_elements=4096, max_bytes_element=64)
DATATYPES = list(DTYPES)
CONTENT_TYPES = {Encoding.JSON: None, Encoding.BINARY: None, Encoding.MSGPACK: "application/msgpack"}


def decode(encoding: Encoding, body: bytes, header_length: int | None = None) -> InferRequest:
    return decode_request(
        body, content_type=CONTENT_TYPES[encoding], header_length=header_length, model="m", version="", limits=LIMITS
    )


def assert_well_formed(request: InferRequest) -> None:
    """What the rest of the gateway relies on: each tensor's array has its declared shape and datatype."""
    assert isinstance(request, InferRequest)
    for tensor in request.inputs:
        assert tensor.data.shape == tensor.shape
        assert tensor.data.dtype == DTYPES[tensor.datatype]
        if tensor.datatype == "BYTES":
            assert all(type(element) is bytes for element in tensor.data.flat)


def decodes_or_refuses(encoding: Encoding, body: bytes, header_length: int | None = None) -> None:
    try:
        request = decode(encoding, body, header_length)
    except (BadRequest, PayloadTooLarge) as e:
        assert type(e) in (BadRequest, PayloadTooLarge)  # not some subclass smuggling a 500
        return
    assert_well_formed(request)


# --- (a) any input: a request or a protocol error ----------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(Encoding))
@FUZZ
@given(body=st.binary(max_size=512), header_length=st.integers(-4, 520), prefix=st.sampled_from([b"", b'{"inputs":[']))
def test_any_bytes_decode_to_a_request_or_a_protocol_error(
    encoding: Encoding, body: bytes, header_length: int, prefix: bytes
) -> None:
    decodes_or_refuses(encoding, prefix + body, header_length if encoding is Encoding.BINARY else None)


# Request-shaped documents whose every field may be the right kind, a near miss, or anything at all.
WORDS = st.sampled_from([*DTYPES, "FP8", "x", "y", "", "binary_data_size", "binary_data", "binary_data_output"])
SCALARS = st.none() | st.booleans() | st.floats() | st.text(max_size=4) | WORDS
JSON_SCALARS = SCALARS | st.integers(-(2**65), 2**65)
MSGPACK_SCALARS = SCALARS | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8)  # msgpack ints are 64-bit


def anything(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(max_size=3) | WORDS
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=10
    )


# Homogeneous element kinds for data sized to its shape; the last mixes every kind.
ELEMENTS = st.sampled_from(
    [
        st.integers(-300, 300),
        st.integers(-(2**64), 2**64),
        st.floats(),
        st.booleans(),
        st.text(max_size=3),
        JSON_SCALARS,
    ]
)


@st.composite
def sized_inputs(draw: st.DrawFn, *, raw: bool) -> dict[str, Any]:
    """An input whose data is sized to its shape, or off by one: JSON values of any kind, or raw bytes (msgpack)."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = max(0, math.prod(shape) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    if not raw:
        data: Any = draw(st.lists(draw(ELEMENTS), min_size=count, max_size=count))
    elif datatype == "BYTES":
        data = length_prefixed(*draw(st.lists(st.binary(max_size=4), min_size=count, max_size=count)))
    else:
        size = count * DTYPES[datatype].itemsize
        data = draw(st.binary(min_size=size, max_size=size))
    return {"name": draw(st.sampled_from(["x", "y"])), "datatype": datatype, "shape": shape, "data": data}


def requests(leaves: st.SearchStrategy[Any], *, raw: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Request documents whose every field is usually the right kind, and sometimes anything at all."""
    wild = anything(leaves)

    def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        # Three times in four, so that most documents get past their first field.
        return st.integers(0, 3).flatmap(lambda roll: valid if roll else wild)

    any_input = st.fixed_dictionaries(
        {
            "name": mostly(st.sampled_from(["x", "y"])),
            "datatype": mostly(st.sampled_from(DATATYPES)),
            "shape": mostly(st.lists(st.integers(-1, 3), max_size=3)),
        },
        optional={
            "data": mostly(st.lists(leaves, max_size=9)),
            "parameters": mostly(st.fixed_dictionaries({}, optional={"binary_data_size": mostly(st.integers(-1, 40))})),
        },
    )
    output = st.fixed_dictionaries(
        {"name": mostly(WORDS)}, optional={"parameters": mostly(st.dictionaries(WORDS, leaves, max_size=2))}
    )
    return st.fixed_dictionaries(
        {"inputs": mostly(st.lists(mostly(sized_inputs(raw=raw) | any_input), max_size=3))},
        optional={
            "id": mostly(st.text(max_size=4)),
            "parameters": mostly(st.dictionaries(WORDS, leaves, max_size=3)),
            "outputs": mostly(st.lists(mostly(output), max_size=2)),
        },
    )


@pytest.mark.parametrize("encoding", [Encoding.JSON, Encoding.BINARY])
@FUZZ
@given(document=requests(JSON_SCALARS, raw=False), tail=st.binary(max_size=64))
def test_request_shaped_json_decodes_to_a_request_or_a_protocol_error(
    encoding: Encoding, document: dict[str, Any], tail: bytes
) -> None:
    header = json.dumps(document).encode()
    if encoding is Encoding.BINARY:
        decodes_or_refuses(encoding, header + tail, len(header))
    else:
        decodes_or_refuses(encoding, header)


@FUZZ
@given(document=requests(MSGPACK_SCALARS, raw=True))
def test_request_shaped_msgpack_decodes_to_a_request_or_a_protocol_error(document: dict[str, Any]) -> None:
    decodes_or_refuses(Encoding.MSGPACK, msgpack.packb(document))


# --- (b) valid tensors round-trip exactly ------------------------------------------------------------------------


@st.composite
def tensors(draw: st.DrawFn, *, text: bool) -> tuple[str, np.ndarray]:
    """A datatype and an array of it; BF16 takes every uint16 bit pattern. ``text`` keeps BYTES valid UTF-8."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        elements = st.text(max_size=8).map(str.encode) if text else st.binary(max_size=8)
        return datatype, draw(hnp.arrays(object, shape, elements=elements))
    return datatype, draw(hnp.arrays(DTYPES[datatype], shape))


def json_request(datatype: str, arr: np.ndarray, *, nested: bool) -> bytes:
    """A plain JSON request as a client that knows no binary extension writes it (BF16 as numbers)."""
    if datatype == "BYTES":
        values = np.vectorize(bytes.decode, otypes=[object])(arr)
    elif datatype == "BF16":
        values = arr.view(ml_dtypes.bfloat16).astype(np.float32)
    else:
        values = arr
    data = values.tolist() if nested and arr.ndim else values.reshape(-1).tolist()
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": list(arr.shape), "data": data}]}
    ).encode()


@pytest.mark.parametrize("encoding", list(Encoding))
@FUZZ
@given(data=st.data())
def test_valid_tensor_request_round_trips_exactly(encoding: Encoding, data: st.DataObject) -> None:
    datatype, arr = data.draw(tensors(text=encoding is Encoding.JSON))
    if encoding is Encoding.JSON:
        request = decode(encoding, json_request(datatype, arr, nested=data.draw(st.booleans())))
    elif encoding is Encoding.BINARY:
        request = decode(encoding, *triton_request({"x": (datatype, arr)}, binary=True))
    else:
        request = decode(encoding, msgpack_request({"x": (datatype, arr)}))
    assert request.encoding is encoding
    assert_same(request.inputs[0].data, arr, datatype, bitwise=encoding is not Encoding.JSON)


@pytest.mark.parametrize("encoding", list(Encoding))
@FUZZ
@given(data=st.data())
def test_valid_tensor_response_round_trips_exactly(encoding: Encoding, data: st.DataObject) -> None:
    datatype, arr = data.draw(tensors(text=encoding is Encoding.JSON))
    request = InferRequest(
        "m", "", [], parameters={"binary_data_output": encoding is Encoding.BINARY}, encoding=encoding
    )
    chunks, headers = encode_response(InferResponse("m", "1", [Tensor("y", datatype, arr.shape, arr)]), request)
    if encoding is Encoding.MSGPACK:
        received = msgpack_output_array(msgpack.unpackb(b"".join(chunks))["outputs"][0])
    else:
        received = from_client_array(client_result(chunks, headers).as_numpy("y"), datatype)
    assert_same(received, arr, datatype, bitwise=encoding is not Encoding.JSON)
