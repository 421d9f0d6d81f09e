"""Decode v2 inference requests and encode their replies, in the encoding the client chose.

    Content-Type application/msgpack      -> Encoding.MSGPACK  msgpack document, tensor data as raw ``bin``
    Inference-Header-Content-Length: N    -> Encoding.BINARY   N bytes of JSON header, then raw tensor bytes
    anything else                         -> Encoding.JSON     one JSON document

Pure functions, bytes in and value objects out: every malformed body becomes a BadRequest (400) or, when it
asks for more than ``DecodeLimits`` allows, a PayloadTooLarge (413). The reply goes back the way the request came.
The one state kept is a bounded cache of decoded binary headers (``_PLANS``): a header seen before, byte for
byte and under the same limits, is not parsed and checked again; each request still gets objects of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol import binary, json_codec, msgpack_codec
from railcore.protocol.json_codec import kind_of
from railcore.protocol.types import DTYPES, Encoding, InferRequest, InferResponse, RequestedOutput, Tensor

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
MSGPACK_CONTENT_TYPE = "application/msgpack"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(slots=True, frozen=True)
class DecodeLimits:
    """How much one request may make the gateway allocate or walk (per request, per tensor, per element)."""

    max_inputs: int = 64
    max_elements: int = 16_777_216  # per tensor
    max_bytes_element: int = 1_048_576  # one BYTES element
    max_dims: int = 8
    max_json_depth: int = 32  # nesting of a JSON ``data`` list
    max_json_python_bytes: int = 128 * 1024 * 1024  # what parsing a JSON body may build, bounded before it runs
    max_msgpack_items: int = 1_048_576  # array and map entries in a msgpack body, all together


def header_length(headers: Mapping[str, str]) -> int | None:
    """``Inference-Header-Content-Length`` (Triton's binary extension): the JSON header's byte length."""
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit alone takes '²' and Arabic-Indic digits
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


# Builds one input's array from its spec: (spec, parameters, datatype, shape, element count) -> array.
_DataDecoder = Callable[[dict[str, Any], dict[str, Any], str, tuple[int, ...], int], np.ndarray]


def decode_request(
    body: bytes | bytearray | memoryview,
    *,
    content_type: str | None,
    header_length: int | None,
    model: str,
    version: str,
    limits: DecodeLimits,
) -> InferRequest:
    """The request in ``body``. ``header_length`` is the Inference-Header-Content-Length header, if any."""
    try:
        view = memoryview(body).cast("B")  # index bytes, whatever the buffer's item format
        if msgpack_codec.is_msgpack(content_type):
            header = msgpack_codec.loads(view, limits.max_msgpack_items)
            return _request(header, model, version, limits, Encoding.MSGPACK, partial(_msgpack_data, limits=limits))
        header_bytes, section = _split_body(view, header_length)
        key = bytes(header_bytes) if header_length is not None and header_length <= _PLAN_MAX_HEADER else None
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None and plan.limits is limits:
            request = plan.request(model, version, section)
        else:
            header = json_codec.loads(header_bytes if key is None else key, limits.max_json_python_bytes)
            encoding = Encoding.JSON if header_length is None else Encoding.BINARY
            request = _request(
                header, model, version, limits, encoding, partial(_json_data, section=section, limits=limits)
            )
            if key is not None:
                _remember(key, header, request, limits)
        section.check_consumed()
        return request
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        # The decoders check explicitly; this last guard keeps a check we missed a 400 rather than a 500, since
        # every byte here comes from the client.
        raise BadRequest(f"malformed request: {e}") from None


def encode_response(response: InferResponse, request: InferRequest) -> tuple[list[bytes | memoryview], dict[str, str]]:
    """The reply body, as chunks to write in order, and its headers, in the encoding ``request`` arrived in.

    JSON and binary requests get a JSON header; each output the request wants binary (per output
    ``binary_data``, else the request's ``binary_data_output``) has its raw bytes appended after it instead of
    ``data``, as Triton does even for a request that was itself plain JSON.
    """
    if request.encoding is Encoding.MSGPACK:
        outputs = [_output_entry(t, data=binary.tensor_bytes(t.data, t.datatype)) for t in response.outputs]
        return [msgpack_codec.dumps(_reply(response, request, outputs))], {"Content-Type": MSGPACK_CONTENT_TYPE}
    outputs, chunks = [], []
    for tensor in response.outputs:
        if request.wants_binary(tensor.name):
            raw = binary.tensor_bytes(tensor.data, tensor.datatype)
            outputs.append(_output_entry(tensor, binary_size=len(raw)))
            chunks.append(raw)
        else:
            outputs.append(_output_entry(tensor, data=json_codec.json_data(tensor.data, tensor.datatype)))
    header = json_codec.dumps(_reply(response, request, outputs))
    if not chunks:
        return [header], {"Content-Type": JSON_CONTENT_TYPE}
    return [header, *chunks], {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}


def encode_error(message: str, encoding: Encoding) -> tuple[bytes, str]:
    """An ``{"error": message}`` body and its Content-Type: msgpack for msgpack clients, JSON for the rest."""
    if encoding is Encoding.MSGPACK:
        return msgpack_codec.dumps({"error": message}), MSGPACK_CONTENT_TYPE
    return json_codec.dumps({"error": message}), JSON_CONTENT_TYPE


class _Plan:
    """A binary request's JSON header, decoded and checked once: what every request whose header has
    the same bytes shares. Clients send the same header (model, shapes, parameters) on every call and
    only the tensor bytes after it change, so those are all that is read again (~2 us, not ~6 us)."""

    __slots__ = ("id", "inputs", "limits", "outputs", "parameters")

    def __init__(self, limits: DecodeLimits, request: InferRequest, sizes: list[int]) -> None:
        self.limits = limits  # the checks it passed: a plan serves only the same limits
        self.inputs = [
            (t.name, t.datatype, t.shape, t.data.size, dict(t.parameters), size)
            for t, size in zip(request.inputs, sizes, strict=True)
        ]
        self.outputs = [RequestedOutput(o.name, o.binary, dict(o.parameters)) for o in request.outputs]
        self.id, self.parameters = request.id, dict(request.parameters)

    def request(self, model: str, version: str, section: _BinarySection) -> InferRequest:
        inputs = []
        for name, datatype, shape, count, parameters, size in self.inputs:
            try:
                data = binary.tensor_from_buffer(
                    section.take(size), datatype, shape, count, max_bytes_element=self.limits.max_bytes_element
                )
            except (BadRequest, PayloadTooLarge) as e:
                raise _about(e, f"input {_show(name)}") from None
            inputs.append(Tensor(name, datatype, shape, data, dict(parameters)))
        # Each request gets its own lists and dicts: nothing a request holds is shared with another.
        outputs = [RequestedOutput(o.name, o.binary, dict(o.parameters)) for o in self.outputs]
        return InferRequest(model, version, inputs, outputs, self.id, dict(self.parameters), Encoding.BINARY)


# Decoded binary headers by their bytes (bounded: emptied when full, a client's unique ids only cost misses).
_PLANS: dict[bytes, _Plan] = {}
_PLANS_MAX = 256
_PLAN_MAX_HEADER = 4096  # bytes; a header past it (inline JSON data, many inputs) is decoded every time


def _remember(key: bytes, header: dict[str, Any], request: InferRequest, limits: DecodeLimits) -> None:
    """Keep the plan of a decoded binary header whose every input's data is in the binary section."""
    sizes: list[int] = []
    for spec in header["inputs"]:
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if type(size) is not int:
            return  # this input's data is inline in the header: it differs from call to call
        sizes.append(size)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = _Plan(limits, request, sizes)


class _BinarySection:
    """The raw tensor bytes after the JSON header, handed out in input order."""

    __slots__ = ("_offset", "_view")

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._offset = 0

    def take(self, size: Any) -> memoryview:
        if type(size) is not int or size < 0:
            raise BadRequest(f"binary_data_size must be a non-negative integer, got {_show(size)}")
        left = len(self._view) - self._offset
        if size > left:
            raise BadRequest(f"binary_data_size {size} runs past the end of the body ({left} bytes left)")
        self._offset += size
        return self._view[self._offset - size : self._offset]

    def check_consumed(self) -> None:
        left = len(self._view) - self._offset
        if left:
            raise BadRequest(
                f"{left} bytes of binary data follow the last tensor; expected exactly the inputs' binary_data_size"
            )


def _split_body(view: memoryview, header_length: int | None) -> tuple[memoryview, _BinarySection]:
    """The JSON header and the binary section after it (empty for a plain JSON body)."""
    if header_length is None:
        return view, _BinarySection(view[len(view) :])
    if header_length < 0:
        raise BadRequest(f"{HEADER_LENGTH} {header_length} is negative; expected the byte length of the JSON header")
    if header_length > len(view):
        raise BadRequest(f"{HEADER_LENGTH} {header_length} is larger than the body ({len(view)} bytes)")
    return view[:header_length], _BinarySection(view[header_length:])


def _request(
    header: Any, model: str, version: str, limits: DecodeLimits, encoding: Encoding, decode_data: _DataDecoder
) -> InferRequest:
    if not isinstance(header, dict):
        raise BadRequest(f"request must be an object, got {kind_of(header)}")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"id must be a string, got {kind_of(request_id)}")
    specs = header.get("inputs")
    if not isinstance(specs, list):
        raise BadRequest(f"inputs must be a list of tensors, got {kind_of(specs)}")
    if len(specs) > limits.max_inputs:
        raise BadRequest(f"request has {len(specs)} inputs; the limit is {limits.max_inputs}")
    inputs: list[Tensor] = []
    names: set[str] = set()
    for index, spec in enumerate(specs):
        tensor = _input(spec, index, limits, decode_data)
        if tensor.name in names:
            raise BadRequest(f"input {_show(tensor.name)} appears more than once; expected unique input names")
        names.add(tensor.name)
        inputs.append(tensor)
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs")),
        id=request_id,
        parameters=_object(header.get("parameters"), "parameters"),
        encoding=encoding,
    )


def _input(spec: Any, index: int, limits: DecodeLimits, decode_data: _DataDecoder) -> Tensor:
    name = _name(spec, "inputs", index)
    try:
        datatype = spec.get("datatype")
        if not isinstance(datatype, str) or datatype not in DTYPES:
            raise BadRequest(f"unknown datatype {_show(datatype)}; expected one of {', '.join(DTYPES)}")
        shape = _shape(spec.get("shape"), limits.max_dims)
        count = math.prod(shape)
        if count > limits.max_elements:
            raise PayloadTooLarge(f"shape {list(shape)} holds {count} elements; the limit is {limits.max_elements}")
        parameters = _object(spec.get("parameters"), "parameters")
        data = decode_data(spec, parameters, datatype, shape, count)
    except (BadRequest, PayloadTooLarge) as e:  # the subject is formatted only when there is an error
        raise _about(e, f"input {_show(name)}") from None
    # binary_data_size describes this body only: it must not follow the tensor to a hub.
    if "binary_data_size" in parameters:
        parameters = {k: v for k, v in parameters.items() if k != "binary_data_size"}
    return Tensor(name, datatype, shape, data, parameters)


def _json_data(
    spec: dict[str, Any],
    parameters: dict[str, Any],
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    *,
    section: _BinarySection,
    limits: DecodeLimits,
) -> np.ndarray:
    """Data from the JSON ``data`` list, or from the binary section when ``binary_data_size`` is given."""
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise BadRequest("has neither data nor parameters.binary_data_size; expected one of them")
        return json_codec.array_from_json(
            spec["data"],
            datatype,
            shape,
            count,
            max_depth=limits.max_json_depth,
            max_bytes_element=limits.max_bytes_element,
        )
    if "data" in spec:
        raise BadRequest("has both data and parameters.binary_data_size; expected one of them")
    return binary.tensor_from_buffer(
        section.take(size), datatype, shape, count, max_bytes_element=limits.max_bytes_element
    )


def _msgpack_data(
    spec: dict[str, Any],
    parameters: dict[str, Any],
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    *,
    limits: DecodeLimits,
) -> np.ndarray:
    data = spec.get("data")
    if not isinstance(data, bytes):
        raise BadRequest(f"data must be bin (raw little-endian tensor bytes), got {kind_of(data)}")
    return binary.tensor_from_buffer(
        memoryview(data), datatype, shape, count, max_bytes_element=limits.max_bytes_element
    )


def _requested_outputs(value: Any) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"outputs must be a list, got {kind_of(value)}")
    outputs = []
    for index, spec in enumerate(value):
        name = _name(spec, "outputs", index)
        try:
            parameters = _object(spec.get("parameters"), "parameters")
            binary_data = parameters.get("binary_data")
            if binary_data is not None and not isinstance(binary_data, bool):
                raise BadRequest(f"parameters.binary_data must be true or false, got {kind_of(binary_data)}")
        except (BadRequest, PayloadTooLarge) as e:
            raise _about(e, f"output {_show(name)}") from None
        rest = {k: v for k, v in parameters.items() if k != "binary_data"}
        outputs.append(RequestedOutput(name, binary_data, rest))
    return outputs


def _name(spec: Any, field: str, index: int) -> str:
    """The name of entry ``index`` of ``field`` (inputs, outputs); where it is is formatted only for an error."""
    if not isinstance(spec, dict):
        raise BadRequest(f"{field}[{index}] must be an object, got {kind_of(spec)}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise BadRequest(f"{field}[{index}] needs a string name, got {kind_of(name)}")
    return name


def _shape(value: Any, max_dims: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"shape must be a list of integers, got {kind_of(value)}")
    if len(value) > max_dims:
        raise BadRequest(f"shape has {len(value)} dimensions; the limit is {max_dims}")
    # type() rather than isinstance(): a JSON true is a Python int, and not a dimension. Both checks run in C
    # (no generator frame per dimension): this is on every request's path.
    if not set(map(type, value)) <= _INT_ONLY:
        raise BadRequest(f"shape must be a list of integers, got {_show(value)}")
    if value and min(value) < 0:
        raise BadRequest(f"shape {value} has a negative dimension; expected sizes >= 0")
    return tuple(value)


_INT_ONLY = frozenset({int})


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object, got {kind_of(value)}")
    return value


def _output_entry(tensor: Tensor, *, data: Any = None, binary_size: int | None = None) -> dict[str, Any]:
    """An output's reply entry, carrying either ``data`` or the ``binary_data_size`` of bytes after the header."""
    entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(map(int, tensor.shape))}
    # A binary_data_size the tensor brought from a hub describes that hub's body, not ours.
    parameters = {k: v for k, v in tensor.parameters.items() if k != "binary_data_size"} if tensor.parameters else {}
    if binary_size is not None:
        parameters["binary_data_size"] = binary_size
    if parameters:
        entry["parameters"] = parameters
    if data is not None:
        entry["data"] = data
    return entry


def _reply(response: InferResponse, request: InferRequest, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    reply: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if request.id is not None:
        reply["id"] = request.id  # echoed, as Triton does: the client correlates by its own id
    if response.parameters:
        reply["parameters"] = response.parameters
    reply["outputs"] = outputs
    return reply


def _about(error: BadRequest | PayloadTooLarge, subject: str) -> BadRequest | PayloadTooLarge:
    """The protocol error ``error`` with its message prefixed by the part of the request it is about."""
    return type(error)(f"{subject}: {error.message}")


def _show(value: Any, limit: int = 60) -> str:
    """A short repr for error messages: the value comes from the client and may be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
