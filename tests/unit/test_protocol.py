"""The v2 codecs: what tritonclient sends decodes to the same arrays, and what we send tritonclient reads back."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
import tritonclient.http as triton_http
import tritonclient.utils as triton_utils
from tritonclient.http._utils import _get_inference_request

from railcore.errors import BadRequest, PayloadTooLarge, RailgateError
from railcore.protocol import (
    DTYPES,
    DecodeLimits,
    Encoding,
    InferRequest,
    InferResponse,
    Tensor,
    decode_request,
    deserialize_bytes_tensor,
    encode_error,
    encode_response,
    json_codec,
    serialize_bytes_tensor,
)

LIMITS = DecodeLimits()
DATATYPES = list(DTYPES)
NUMERIC = [d for d in DATATYPES if d != "BYTES"]
HEADER_LENGTH = "Inference-Header-Content-Length"


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Six values per datatype that hit the edges: extremes, signed zero, infinities, empty and non-ASCII text."""
    if datatype == "BYTES":
        values: Any = [b"", b"a", "h\u00e9llo".encode(), b"\x00\x01", b"x" * 300, "\u65e5\u672c".encode()]
        flat = np.empty(6, dtype=object)
        flat[:] = values
        return flat.reshape(shape)
    if datatype == "BOOL":
        return np.array([True, False, True, True, False, False]).reshape(shape)
    if datatype == "BF16":
        floats = np.array([-0.0, 1.5, -2.25, np.inf, 3.0e38, 1e-3], dtype=np.float32)
        return floats.astype(ml_dtypes.bfloat16).view(np.uint16).reshape(shape)
    dtype = DTYPES[datatype]
    if dtype.kind in "iu":
        iinfo = np.iinfo(dtype)
        return np.array([iinfo.min, 0, 1, 7, iinfo.max - 1, iinfo.max], dtype=dtype).reshape(shape)
    finfo = np.finfo(dtype)
    return np.array([-0.0, 1.5, -2.25, np.inf, finfo.max, finfo.tiny], dtype=dtype).reshape(shape)


def as_client_array(arr: np.ndarray, datatype: str) -> np.ndarray:
    """Our representation as tritonclient wants it: BF16 bits become ml_dtypes.bfloat16."""
    return arr.view(ml_dtypes.bfloat16) if datatype == "BF16" else arr


def from_client_array(arr: np.ndarray, datatype: str) -> np.ndarray:
    """A tritonclient array in our representation (BF16 as uint16 bits, BYTES as bytes)."""
    if datatype == "BF16":
        return np.asarray(arr, dtype=ml_dtypes.bfloat16).view(np.uint16)
    if datatype == "BYTES":
        return np.vectorize(lambda x: x if isinstance(x, bytes) else x.encode(), otypes=[object])(arr)
    return arr


def assert_same(actual: np.ndarray, expected: np.ndarray, datatype: str, *, bitwise: bool = True) -> None:
    """Equal shape and values. ``bitwise=False`` lets NaN payloads differ (JSON has only one NaN)."""
    assert actual.shape == expected.shape
    if datatype == "BYTES":
        assert list(actual.flat) == list(expected.flat)
        return
    assert actual.dtype == DTYPES[datatype]
    if bitwise or datatype not in ("FP16", "FP32", "FP64", "BF16"):
        assert actual.tobytes() == expected.tobytes()
        return
    if datatype == "BF16":
        actual, expected = (a.view(ml_dtypes.bfloat16).astype(np.float32) for a in (actual, expected))
    nan = np.isnan(expected)
    assert (np.isnan(actual) == nan).all()
    assert actual[~nan].tobytes() == expected[~nan].tobytes()


def triton_request(
    tensors: dict[str, tuple[str, np.ndarray]],
    *,
    binary: bool | set[str],
    outputs: list[Any] | None = None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    """A request body and Inference-Header-Content-Length as tritonclient.http builds them.

    ``binary`` sends every tensor as binary data (True), none (False), or the named ones.
    """
    inputs = []
    for name, (datatype, arr) in tensors.items():
        infer_input = triton_http.InferInput(name, list(arr.shape), datatype)
        as_binary = binary if isinstance(binary, bool) else name in binary
        infer_input.set_data_from_numpy(as_client_array(arr, datatype), binary_data=as_binary)
        inputs.append(infer_input)
    options = {"request_id": "", "sequence_id": 0, "sequence_start": False, "sequence_end": False, "priority": 0}
    options |= {"timeout": None, "custom_parameters": None} | kwargs
    return _get_inference_request(inputs=inputs, outputs=outputs, **options)


def triton_bytes(arr: np.ndarray) -> bytes:
    """A BYTES tensor serialized by tritonclient (which returns an empty array rather than b"" for no elements)."""
    serialized = triton_utils.serialize_byte_tensor(arr)
    return serialized.item() if serialized.size else b""


def msgpack_request(tensors: dict[str, tuple[str, np.ndarray]], **top: Any) -> bytes:
    """A msgpack request body: the v2 structure with each tensor's raw little-endian bytes as ``data``."""

    def raw(datatype: str, arr: np.ndarray) -> bytes:
        return triton_bytes(arr) if datatype == "BYTES" else arr.tobytes()

    inputs = [
        {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": raw(datatype, arr)}
        for name, (datatype, arr) in tensors.items()
    ]
    return msgpack.packb({"inputs": inputs, **top})


def decode(
    body: bytes, header_length: int | None = None, *, content_type: str | None = None, limits: DecodeLimits = LIMITS
) -> InferRequest:
    return decode_request(
        body, content_type=content_type, header_length=header_length, model="m", version="1", limits=limits
    )


def client_result(chunks: list[bytes | memoryview], headers: dict[str, str]) -> triton_http.InferResult:
    return triton_http.InferResult.from_response_body(b"".join(chunks), header_length=headers.get(HEADER_LENGTH))


def msgpack_output_array(output: dict[str, Any]) -> np.ndarray:
    """An output of a msgpack reply read independently of our decoder (tritonclient's BYTES deserializer)."""
    if output["datatype"] == "BYTES":
        flat = triton_utils.deserialize_bytes_tensor(output["data"]) if output["data"] else np.empty(0, dtype=object)
    else:
        flat = np.frombuffer(output["data"], dtype=DTYPES[output["datatype"]])
    return flat.reshape(output["shape"])


def response_of(datatype: str, arr: np.ndarray) -> InferResponse:
    return InferResponse("m", "1", [Tensor("y", datatype, arr.shape, arr)])


# --- requests -----------------------------------------------------------------------------------------------------


# tritonclient sends BF16 only as binary data; BF16 as JSON numbers has its own test below.
@pytest.mark.parametrize(
    ("datatype", "binary"),
    [(d, b) for d in DATATYPES for b in (True, False) if b or d != "BF16"],
    ids=lambda v: {True: "binary", False: "json"}.get(v, v) if isinstance(v, bool) else v,
)
def test_tritonclient_request_decodes_to_the_same_array(datatype: str, binary: bool) -> None:
    arr = sample(datatype)
    body, header_length = triton_request({"x": (datatype, arr)}, binary=binary)
    request = decode(body, header_length=header_length)
    assert request.encoding is (Encoding.BINARY if binary else Encoding.JSON)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 3))
    assert_same(tensor.data, arr, datatype)


@pytest.mark.parametrize("content_type", ["application/msgpack", "application/x-msgpack; charset=binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_msgpack_request_decodes_to_the_same_array(datatype: str, content_type: str) -> None:
    arr = sample(datatype)
    request = decode(msgpack_request({"x": (datatype, arr)}), content_type=content_type)
    assert request.encoding is Encoding.MSGPACK
    assert_same(request.inputs[0].data, arr, datatype)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_inputs_are_zero_copy_views_of_the_body(datatype: str) -> None:
    body, header_length = triton_request(
        {"a": (datatype, sample(datatype)), "b": (datatype, sample(datatype))}, binary=True
    )
    request = decode(body, header_length=header_length)
    whole = np.frombuffer(body, dtype=np.uint8)
    assert all(np.shares_memory(tensor.data, whole) for tensor in request.inputs)


def test_binary_inputs_are_consumed_in_order_between_json_inputs() -> None:
    tensors = {"a": ("FP32", sample("FP32")), "b": ("BYTES", sample("BYTES")), "c": ("INT8", sample("INT8"))}
    request = decode(*triton_request(tensors, binary={"a", "c"}))
    for tensor, (datatype, arr) in zip(request.inputs, tensors.values(), strict=True):
        assert_same(tensor.data, arr, datatype)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([1, 2, 3, 4, 5, 6], [2, 3]),
        ([[1, 2, 3], [4, 5, 6]], [2, 3]),
        ([[[1], [2], [3]], [[4], [5], [6]]], [2, 3]),
    ],
    ids=["flat", "nested", "nested-deeper-than-shape"],
)
def test_json_data_may_be_flat_or_nested_row_major(data: list[Any], shape: list[int]) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": shape, "data": data}]}).encode()
    np.testing.assert_array_equal(decode(body).inputs[0].data, np.arange(1, 7, dtype="<i4").reshape(2, 3))


def test_json_bytes_accept_nested_lists_of_strings() -> None:
    data = [["a", "\u00e9"], ["", "z"]]
    body = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": data}]}).encode()
    assert decode(body).inputs[0].data.tolist() == [[b"a", "\u00e9".encode()], [b"", b"z"]]


def test_json_bf16_numbers_become_round_to_nearest_even_bits() -> None:
    floats = np.array([1.0, 3.14159, -2.0e-3, 1.00390625, 1.01171875, 3.4e38, np.inf, -0.0], dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "h", "datatype": "BF16", "shape": [8], "data": floats.tolist()}]})
    expected = floats.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert decode(body.encode()).inputs[0].data.tolist() == expected.tolist()


def test_request_fields_are_kept_and_outputs_split_off_binary_data() -> None:
    outputs = [triton_http.InferRequestedOutput("y", binary_data=False), triton_http.InferRequestedOutput("z")]
    body, header_length = triton_request(
        {"x": ("FP32", sample("FP32"))}, binary=True, outputs=outputs, request_id="r-1", timeout=5000, priority=2
    )
    request = decode(body, header_length=header_length)
    assert request.id == "r-1"
    assert request.parameters == {"timeout": 5000, "priority": 2}
    assert [(o.name, o.binary, o.parameters) for o in request.outputs] == [("y", False, {}), ("z", True, {})]
    assert request.inputs[0].parameters == {}  # binary_data_size describes the body, not the tensor


# --- responses ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-output", "json-output"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_reads_back_the_response(datatype: str, binary_output: bool) -> None:
    outputs = [triton_http.InferRequestedOutput("y", binary_data=binary_output)]
    request = decode(*triton_request({"x": ("INT8", sample("INT8"))}, binary=True, outputs=outputs))
    arr = sample(datatype)
    chunks, headers = encode_response(response_of(datatype, arr), request)
    assert (HEADER_LENGTH in headers) is binary_output
    result = client_result(chunks, headers)
    assert_same(from_client_array(result.as_numpy("y"), datatype), arr, datatype)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_msgpack_response_carries_raw_little_endian_bytes(datatype: str) -> None:
    request = decode(msgpack_request({"x": ("INT8", sample("INT8"))}, id="q"), content_type="application/msgpack")
    arr = sample(datatype)
    chunks, headers = encode_response(response_of(datatype, arr), request)
    assert headers == {"Content-Type": "application/msgpack"}
    reply = msgpack.unpackb(b"".join(chunks))
    assert reply["id"] == "q"
    (output,) = reply["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", datatype, [2, 3])
    assert_same(msgpack_output_array(output), arr, datatype)


@pytest.mark.parametrize(
    ("parameters", "outputs", "binary_names"),
    [
        ({"binary_data_output": True}, [], {"y", "z"}),
        ({}, [], set()),
        ({}, [{"name": "z", "parameters": {"binary_data": True}}], {"z"}),
        ({"binary_data_output": True}, [{"name": "y", "parameters": {"binary_data": False}}], {"z"}),
    ],
    ids=["request-wide", "default-json", "per-output", "per-output-overrides-request"],
)
def test_plain_json_request_gets_the_binary_outputs_it_asks_for(
    parameters: dict[str, Any], outputs: list[dict[str, Any]], binary_names: set[str]
) -> None:
    body = {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}], "outputs": outputs}
    request = decode(json.dumps(body | {"parameters": parameters}).encode())
    response = InferResponse("m", "1", [Tensor(n, "FP32", (2, 3), sample("FP32")) for n in ("y", "z")])
    chunks, headers = encode_response(response, request)
    header = json.loads(bytes(chunks[0]))
    assert {o["name"] for o in header["outputs"] if "binary_data_size" in o.get("parameters", {})} == binary_names
    expected = "application/octet-stream" if binary_names else "application/json"
    assert headers["Content-Type"] == expected
    assert headers.get(HEADER_LENGTH) == (str(len(chunks[0])) if binary_names else None)
    result = client_result(chunks, headers)
    assert all(np.array_equal(result.as_numpy(n), sample("FP32")) for n in ("y", "z"))


def test_binary_outputs_are_views_of_the_output_arrays() -> None:
    request = decode(*triton_request({"x": ("INT8", sample("INT8"))}, binary=True))  # no outputs: all binary
    arr = sample("FP64")
    chunks, _ = encode_response(response_of("FP64", arr), request)
    assert np.shares_memory(np.frombuffer(chunks[1], dtype=np.uint8), arr)


def test_response_json_has_the_v2_fields_and_merges_output_parameters() -> None:
    request = decode(json.dumps({"id": "abc", "inputs": []}).encode())
    output = Tensor("y", "INT32", (2,), np.array([1, 2], dtype="<i4"), {"binary_data_size": 99, "unit": "px"})
    response = InferResponse("m", "3", [output], parameters={"sequence_end": True})
    chunks, _ = encode_response(response, request)
    assert json.loads(b"".join(chunks)) == {
        "model_name": "m",
        "model_version": "3",
        "id": "abc",
        "parameters": {"sequence_end": True},
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [2], "data": [1, 2], "parameters": {"unit": "px"}}],
    }


def test_response_omits_id_and_empty_parameters() -> None:
    request = decode(json.dumps({"inputs": []}).encode())
    chunks, _ = encode_response(InferResponse("m", "1", []), request)
    assert json.loads(bytes(chunks[0])) == {"model_name": "m", "model_version": "1", "outputs": []}


def test_json_output_replaces_invalid_utf8_bytes() -> None:
    request = decode(json.dumps({"inputs": []}).encode())
    arr = np.array([b"ok", b"\xff"], dtype=object)
    chunks, _ = encode_response(response_of("BYTES", arr), request)
    assert json.loads(bytes(chunks[0]))["outputs"][0]["data"] == ["ok", "\ufffd"]


@pytest.mark.parametrize(
    ("encoding", "content_type", "loads"),
    [(Encoding.JSON, "application/json", json.loads), (Encoding.MSGPACK, "application/msgpack", msgpack.unpackb)],
)
def test_errors_are_encoded_as_the_client_speaks(encoding: Encoding, content_type: str, loads: Any) -> None:
    body, ctype = encode_error("input 'x': bad", encoding)
    assert (ctype, loads(body)) == (content_type, {"error": "input 'x': bad"})


# --- BYTES serialization ------------------------------------------------------------------------------------------


def test_bytes_tensor_serialization_matches_tritonclient() -> None:
    arr = sample("BYTES")
    assert serialize_bytes_tensor(arr) == triton_bytes(arr)
    np.testing.assert_array_equal(deserialize_bytes_tensor(serialize_bytes_tensor(arr), 6), arr.reshape(-1))


# --- errors -------------------------------------------------------------------------------------------------------


def json_body(*inputs: Any, **top: Any) -> dict[str, Any]:
    return {"body": json.dumps({"inputs": list(inputs), **top}).encode()}


def binary_body(raw: bytes, *inputs: dict[str, Any]) -> dict[str, Any]:
    header = json.dumps({"inputs": list(inputs)}).encode()
    return {"body": header + raw, "header_length": len(header)}


def x(datatype: Any = "FP32", shape: Any = (3,), name: Any = "x", **fields: Any) -> dict[str, Any]:
    """An input spec; ``data`` defaults to enough zeros unless binary_data_size or data is given."""
    spec = {"name": name, "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape}
    if "parameters" not in fields and "data" not in fields:
        fields["data"] = [0] * 3
    return spec | fields


def sized(size: Any, datatype: str = "FP32", shape: Any = (3,)) -> dict[str, Any]:
    return x(datatype, shape, parameters={"binary_data_size": size})


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


SMALL = DecodeLimits(max_inputs=2, max_elements=100, max_bytes_element=4, max_dims=3, max_json_depth=4)

ERROR_CASES = [
    ({"body": b"{nope"}, BadRequest, "body is not valid JSON"),
    ({"body": b"[" * 100_000}, BadRequest, "body is not valid JSON"),
    ({"body": b"\xff\xfe{"}, BadRequest, "body is not valid JSON"),
    ({"body": b"{}", "header_length": 900}, BadRequest, "Inference-Header-Content-Length 900 is larger than the body (2 bytes)"),
    ({"body": b"{}", "header_length": -1}, BadRequest, "Inference-Header-Content-Length -1 is negative"),
    ({"body": b"[]"}, BadRequest, "request must be an object, got list"),
    ({"body": b"{}"}, BadRequest, "inputs must be a list of tensors, got null"),
    (json_body(id=7), BadRequest, "id must be a string, got integer"),
    ({"body": b'{"inputs": {}}'}, BadRequest, "inputs must be a list of tensors, got object"),
    (json_body(x(), x(name="y"), x(name="z")), BadRequest, "request has 3 inputs; the limit is 2"),
    (json_body(x(), x()), BadRequest, "input 'x' appears more than once"),
    (json_body(5), BadRequest, "inputs[0] must be an object, got integer"),
    (json_body(x(name=None)), BadRequest, "inputs[0] needs a string name, got null"),
    (json_body(x(datatype="FP8")), BadRequest, "input 'x': unknown datatype 'FP8'; expected one of BOOL, INT8"),
    (json_body(x(datatype=None)), BadRequest, "input 'x': unknown datatype None"),
    (json_body(x(datatype=["FP32"])), BadRequest, "input 'x': unknown datatype ['FP32']"),
    (json_body(x(shape=None)), BadRequest, "input 'x': shape must be a list of integers, got null"),
    (json_body(x(shape=["3"])), BadRequest, "input 'x': shape must be a list of integers, got ['3']"),
    (json_body(x(shape=[True])), BadRequest, "input 'x': shape must be a list of integers, got [True]"),
    (json_body(x(shape=[1.0])), BadRequest, "input 'x': shape must be a list of integers"),
    (json_body(x(shape=[-1, 3])), BadRequest, "input 'x': shape [-1, 3] has a negative dimension"),
    (json_body(x(shape=[1] * 4)), BadRequest, "input 'x': shape has 4 dimensions; the limit is 3"),
    (json_body(x(shape=[101])), PayloadTooLarge, "input 'x': shape [101] holds 101 elements; the limit is 100"),
    (json_body(x(shape=[10**30, 10**30])), PayloadTooLarge, "input 'x': shape"),
    (json_body(x(parameters=[])), BadRequest, "input 'x': parameters must be an object, got list"),
    (json_body(x(), parameters=1), BadRequest, "parameters must be an object, got integer"),
    (json_body(x(shape=[2, 32], name="pixels", data=[0] * 63)), BadRequest, "input 'pixels': shape [2, 32] holds 64 elements but data has 63"),
    (json_body(x(data="abc")), BadRequest, "input 'x': data must be a list, got string"),
    (json_body(x(parameters={})), BadRequest, "input 'x': has neither data nor parameters.binary_data_size"),
    (json_body(x("INT32", data=[1, 2.5, 3])), BadRequest, "input 'x': INT32 data must hold only integers"),
    (json_body(x(data=[1, "2", 3])), BadRequest, "input 'x': FP32 data must hold only numbers"),
    (json_body(x(data=[1, None, 3])), BadRequest, "input 'x': FP32 data must hold only numbers"),
    (json_body(x("BOOL", data=[1, 0, 1])), BadRequest, "input 'x': BOOL data must hold only true/false"),
    (json_body(x("INT8", data=[1, 300, 3])), BadRequest, "input 'x': INT8 data must hold only integers in [-128, 127]"),
    (json_body(x("UINT64", data=[1, -1, 3])), BadRequest, "input 'x': UINT64 data must hold only integers in [0, "),
    (json_body(x("INT64", data=[1, 2**63, 3])), BadRequest, "input 'x': INT64 data must hold only integers in"),
    (json_body(x("INT64", data=[1, 2**64, 3])), BadRequest, "input 'x': INT64 data must hold only integers"),
    (json_body(x("UINT64", data=[1, 2**64, 3])), BadRequest, "input 'x': UINT64 data must hold only integers"),
    (json_body(x("UINT64", data=[1, 2**63, 3.0])), BadRequest, "input 'x': UINT64 data must hold only integers"),
    (json_body(x(data=[1, [2], 3])), BadRequest, "input 'x': FP32 data must be a rectangular list of numbers"),
    (json_body(x(shape=[1], data=[[[[[1]]]]])), BadRequest, "input 'x': data nests lists more than 4 deep"),
    (json_body(x("BYTES", [1], data=[[[[["a"]]]]])), BadRequest, "input 'x': data nests lists more than 4 deep"),
    (json_body(x("BYTES", data=["a", 1, "c"])), BadRequest, "input 'x': BYTES element 1 must be a string, got integer"),
    (json_body(x("BYTES", data=["a", "b", "\ud800"])), BadRequest, "input 'x': BYTES element 2 is not valid Unicode"),
    (json_body(x("BYTES", data=["a", "b", "abcde"])), PayloadTooLarge, "input 'x': BYTES element 2 has 5 bytes"),
    (json_body(x(), outputs={}), BadRequest, "outputs must be a list, got object"),
    (json_body(x(), outputs=[{"name": 1}]), BadRequest, "outputs[0] needs a string name, got integer"),
    (json_body(x(), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), BadRequest, "output 'y': parameters.binary_data must be true or false"),
    (binary_body(bytes(12), sized(100)), BadRequest, "input 'x': binary_data_size 100 runs past the end of the body (12 bytes left)"),
    (binary_body(bytes(10), sized(10)), BadRequest, "input 'x': data has 10 bytes, expected 12 for FP32 [3]"),
    (binary_body(bytes(14), sized(12)), BadRequest, "2 bytes of binary data follow the last tensor"),
    (binary_body(bytes(12), sized(-12)), BadRequest, "input 'x': binary_data_size must be a non-negative integer, got -12"),
    (binary_body(bytes(12), sized("12")), BadRequest, "input 'x': binary_data_size must be a non-negative integer, got '12'"),
    (binary_body(bytes(12), sized(12) | {"data": [0, 0, 0]}), BadRequest, "input 'x': has both data and parameters.binary_data_size"),
    ({"body": b'{"inputs": [' + json.dumps(sized(12)).encode() + b"]}"}, BadRequest, "input 'x': binary_data_size 12 runs past the end of the body (0 bytes left)"),
    (binary_body(length_prefixed(b"a") + b"\x09\0\0\0ab", sized(11, "BYTES", (2,))), BadRequest, "input 'x': BYTES element 1: length prefix 9 runs past the end of the tensor (2 bytes left)"),
    (binary_body(length_prefixed(b"abc") + b"\x01\0", sized(9, "BYTES", (2,))), BadRequest, "input 'x': BYTES element 1 has no 4-byte length prefix"),
    (binary_body(length_prefixed(b"a", b"b") + b"!", sized(11, "BYTES", (2,))), BadRequest, "input 'x': BYTES data has 1 bytes left over after its 2 elements"),
    (binary_body(bytes(4), sized(4, "BYTES", (2,))), BadRequest, "input 'x': BYTES data has 4 bytes, too few for 2 elements"),
    (binary_body(length_prefixed(b"abcde"), sized(9, "BYTES", (1,))), PayloadTooLarge, "input 'x': BYTES element 0 has 5 bytes; the limit is 4"),
    ({"body": b"\xc1", "content_type": "application/msgpack"}, BadRequest, "body is not valid msgpack"),
    ({"body": b"\x91" * 100_000, "content_type": "application/msgpack"}, BadRequest, "body is not valid msgpack"),
    ({"body": msgpack.packb({"inputs": [x()]}), "content_type": "application/msgpack"}, BadRequest, "input 'x': data must be bin (raw little-endian tensor bytes), got list"),
    ({"body": msgpack.packb({"inputs": [x(data=bytes(8))]}), "content_type": "application/msgpack"}, BadRequest, "input 'x': data has 8 bytes, expected 12 for FP32 [3]"),
    ({"body": msgpack.packb({"inputs": [x(datatype="FP8", data=b"")]}), "content_type": "application/msgpack"}, BadRequest, "input 'x': unknown datatype 'FP8'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), ERROR_CASES, ids=[c[2][:60] for c in ERROR_CASES])
def test_malformed_request_is_refused_with_a_message_naming_the_problem(
    kwargs: dict[str, Any], error: type[RailgateError], message: str
) -> None:
    with pytest.raises(error) as raised:
        decode(limits=SMALL, **kwargs)
    assert type(raised.value) is error
    assert message in raised.value.message


# -- JSON through orjson, with the stdlib wherever the two would differ --------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "BF16"])
def test_a_json_reply_writes_nan_and_infinity_as_tritonclient_reads_them(datatype: str) -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    data = json_codec.float32_to_bf16(values) if datatype == "BF16" else values.astype(DTYPES[datatype])
    request = decode(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}')
    response = InferResponse("m", "1", [Tensor("y", datatype, (4,), data)])
    chunks, _ = encode_response(response, request)
    text = b"".join(chunks)
    assert b"NaN,Infinity,-Infinity,1.5" in text and b"null" not in text


def test_a_json_body_with_nan_and_infinity_is_read() -> None:
    request = decode(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -1e400]}]}')
    data = request.inputs[0].data
    assert np.isnan(data[0]) and data[1] == np.inf and data[2] == -np.inf


@pytest.mark.parametrize("error_object", [True, False], ids=["numpy-1-error-object", "errstate-fallback"])
def test_a_json_float_past_a_narrower_types_range_is_an_infinity_without_a_warning(
    error_object: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IEEE's result for a value too large for FP32 or FP16, and no RuntimeWarning per request about it, through
    numpy 1's error object and through the ``np.errstate`` that numpy 2 (no ``seterrobj``) takes."""
    monkeypatch.setattr(json_codec, "_ERROR_OBJECT", error_object)
    for datatype, big in (("FP32", "1e39"), ("FP16", "70000.0")):
        body = f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": [3], "data": [{big}, 1.5, -{big}]}}]}}'
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")  # every warning is recorded, whatever filters the run was given
            data = decode(body.encode()).inputs[0].data
        assert list(data) == [np.inf, 1.5, -np.inf] and data.dtype == DTYPES[datatype]
        assert [str(w.message) for w in seen] == []


def test_reading_a_json_float_leaves_the_callers_numpy_error_state_as_it_was() -> None:
    """The overflow mode is set for the cast only: a caller that raises on overflow still does after it."""
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1e39, 1.5]}]}'
    with np.errstate(over="raise", invalid="warn"):
        before = np.geterr()
        assert decode(body).inputs[0].data[0] == np.inf
        assert np.geterr() == before
        with pytest.raises(FloatingPointError):
            np.array([1e39]).astype(np.float32)


@pytest.mark.parametrize("count", [4, 255, 257, 3000])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_json_reply_with_one_non_finite_float_among_many_is_written_by_the_stdlib(count: int, bad: float) -> None:
    values = np.linspace(-1.0, 1.0, count)
    values[count // 2] = bad
    assert isinstance(json_codec.json_data(values, "FP64"), json_codec.NonFinite)
    assert not isinstance(json_codec.json_data(np.nan_to_num(values, posinf=0, neginf=0), "FP64"), json_codec.NonFinite)


def test_large_finite_floats_whose_sum_is_past_the_float_range_are_finite() -> None:
    values = np.full(8, np.finfo(np.float64).max)
    data = json_codec.json_data(values, "FP64")
    assert not isinstance(data, json_codec.NonFinite) and data == values.tolist()


def test_an_integer_past_64_bits_stays_an_integer() -> None:
    big = 2**64
    body = f'{{"inputs": [{{"name": "x", "datatype": "UINT64", "shape": [1], "data": [{big}]}}]}}'.encode()
    with pytest.raises(BadRequest, match="UINT64 data must hold only integers"):
        decode(body)
    header = json_codec.loads(f'{{"id": "a", "n": {big}}}'.encode())
    assert header["n"] == big and type(header["n"]) is int


def test_a_float_tensor_s_long_fractions_are_read_by_orjson_as_the_stdlib_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Float32 values written as JSON (tritonclient, numpy's tolist) carry digit runs of 19 and more
    after the point (0.00085486622992902994): fractions, which orjson reads exactly as the stdlib.
    Only an integer token that long may not fit 64 bits; a fraction's run must not send the whole
    body to the stdlib, several times slower (a 236 KB image: ~8 ms on the event loop against ~0.6)."""
    values = np.random.default_rng(0).random(4096).astype(np.float32).tolist()
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4096], "data": values}]}).encode()
    assert re.search(rb"\.\d{19}", body)  # the runs are there
    expected = json.loads(body)
    stdlib_calls = []
    stdlib_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda raw, **kw: stdlib_calls.append(raw) or stdlib_loads(raw, **kw))
    assert json_codec.loads(body) == expected and stdlib_calls == []
    for big in (2**64, -(2**63) - 1):  # integer tokens past 64 bits still go to the stdlib, and stay ints
        header = json_codec.loads(f'{{"n": [1.5e-7, {big}]}}'.encode())
        assert header["n"][1] == big and type(header["n"][1]) is int
    assert len(stdlib_calls) == 2


# -- the byte scans before a JSON parse: cheap paths agree with the plain definitions ---------------


def _plain_long_integer(raw: bytes) -> bool:
    """The definition: a run of 19+ digits that starts a token (not after a point, an e/E or a +)."""
    return any(m.start() == 0 or raw[m.start() - 1 : m.start()] not in (b".", b"e", b"E", b"+")
               for m in re.finditer(rb"[0-9]{19,}", raw))  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"1234567890123456789", b"[123456789012345678]", b"[0.00085486622992902994]", b"[1e1234567890123456789]",
        b"[1E+1234567890123456789]", b"[-1234567890123456789]", b'{"a":12345678901234567890}', b"1" * 40,
        b"[0.1234567890123456789,12345678901234567890]", b'"abc1234567890123456789"', b"x" + b"9" * 19,
        b".1234567890123456789", b"[1.5, 2, 3]" * 1000 + b"[98765432109876543210]",
    ],
)  # fmt: skip
def test_the_long_integer_scan_matches_its_definition(raw: bytes) -> None:
    assert json_codec._long_integer(raw) == _plain_long_integer(raw)


def test_the_long_integer_scan_matches_its_definition_on_random_bodies() -> None:
    rng = np.random.default_rng(7)
    alphabet = np.frombuffer(b"0123456789.eE+-,[] ", dtype=np.uint8)
    for _ in range(300):
        digits_heavy = rng.choice(alphabet, size=int(rng.integers(0, 400)), p=[0.09] * 10 + [0.1 / 9] * 9)
        raw = digits_heavy.tobytes()
        assert json_codec._long_integer(raw) == _plain_long_integer(raw), raw


def test_the_python_bytes_bound_is_exact_where_it_could_matter_and_skipped_where_it_cannot() -> None:
    body = b'{"inputs":[{"name":"x","data":[1,2,3]}]}'
    exact = json_codec.python_bytes_bound(body)
    assert exact == len(body) + 32 * body.count(b",") + 64 * 4 + 64 * body.count(b":") + 32 * body.count(b'"')
    with pytest.raises(PayloadTooLarge, match="could take"):
        json_codec.loads(body, max_python_bytes=exact - 1)
    assert json_codec.loads(body, max_python_bytes=exact) == json.loads(body)
    # A body whose every byte could cost the most is still under the limit: no count is needed.
    assert json_codec.loads(body, max_python_bytes=len(body) * json_codec.MAX_PYTHON_BYTES_PER_BYTE)["inputs"]


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/msgpack", True),
        ("application/x-msgpack", True),
        ("application/octet-stream", False),
        ("application/json", False),
        (" Application/MsgPack; charset=binary", True),
        ("APPLICATION/X-MSGPACK", True),
        ("application/json; charset=utf-8", False),
        ("text/plain", False),
        ("", False),
        (None, False),
    ],
)
def test_msgpack_is_told_by_its_media_type_whatever_its_case_and_parameters(content_type, expected) -> None:
    from railcore.protocol.msgpack_codec import is_msgpack

    assert is_msgpack(content_type) is expected
