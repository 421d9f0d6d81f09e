"""The KServe v2 gRPC messages <-> railgate's protocol value objects. Pure: messages in, values out.

Inputs arrive as ``raw_input_contents`` (one raw little-endian buffer per input, in order; BYTES as
4-byte length + bytes per element, as Triton serialises them) or as typed ``contents``; outputs
always go back raw, as Triton's own gRPC server sends them. Every malformed message becomes the
same BadRequest / PayloadTooLarge the HTTP decoders raise, with the same limits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol.binary import tensor_bytes_copy, tensor_from_buffer
from railcore.protocol.codec import DecodeLimits
from railcore.protocol.types import DTYPES, Encoding, InferRequest, InferResponse, RequestedOutput, Tensor

# Which typed ``InferTensorContents`` field carries each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_dict(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (what the JSON front would see)."""
    if not parameters:  # most messages carry none: len() is C, a map's items() is collections.abc's Python
        return {}
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which is not None else None
    return out


def decode_infer_request(message: service_pb2.ModelInferRequest, limits: DecodeLimits) -> InferRequest:
    """``ModelInferRequest`` -> ``InferRequest``; numeric raw inputs stay zero-copy views."""
    specs = message.inputs
    if len(specs) > limits.max_inputs:
        raise BadRequest(f"request has {len(specs)} inputs; the limit is {limits.max_inputs}")
    raw = message.raw_input_contents
    if raw and len(raw) != len(specs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(specs)} inputs; expected one per input")
    inputs = [_input(spec, raw[index] if raw else None, limits) for index, spec in enumerate(specs)]
    if len(inputs) > 1:
        names: set[str] = set()
        for tensor in inputs:
            if tensor.name in names:
                raise BadRequest(f"input {tensor.name[:60]!r} appears more than once; expected unique input names")
            names.add(tensor.name)
    outputs = message.outputs
    return InferRequest(
        model=message.model_name,
        version=message.model_version,
        inputs=inputs,
        outputs=[RequestedOutput(o.name, None, parameters_dict(o.parameters)) for o in outputs] if outputs else [],
        id=message.id or None,
        parameters=parameters_dict(message.parameters),
        encoding=Encoding.BINARY,
    )


def _where(name: str) -> str:
    return f"input {name[:60]!r}"


def _input(spec: Any, raw: bytes | None, limits: DecodeLimits) -> Tensor:
    name = spec.name
    if not name:
        raise BadRequest("an input has no name; expected a non-empty name")
    datatype = spec.datatype
    if datatype not in DTYPES:
        raise BadRequest(f"{_where(name)}: unknown datatype {datatype[:40]!r}; expected one of {', '.join(DTYPES)}")
    shape = tuple(spec.shape)  # a repeated int64: Python ints already
    if len(shape) > limits.max_dims:
        raise BadRequest(f"{_where(name)}: shape has {len(shape)} dims; the limit is {limits.max_dims}")
    if shape and min(shape) < 0:
        raise BadRequest(f"{_where(name)}: shape {list(shape)} has a negative dim; expected sizes >= 0")
    count = math.prod(shape)
    if count > limits.max_elements:
        raise PayloadTooLarge(
            f"{_where(name)}: shape {list(shape)} holds {count} elements; the limit is {limits.max_elements}"
        )
    if raw is not None:
        if spec.HasField("contents"):
            raise BadRequest(f"{_where(name)}: has both contents and raw_input_contents; expected one of them")
        try:
            data = tensor_from_buffer(
                memoryview(raw), datatype, shape, count, max_bytes_element=limits.max_bytes_element
            )
        except BadRequest as exc:
            raise BadRequest(f"{_where(name)}: {exc.message}") from None
    else:
        data = _typed_contents(spec, datatype, shape, count, _where(name), limits)
    return Tensor(name, datatype, shape, data, parameters_dict(spec.parameters))


def _typed_contents(
    spec: Any, datatype: str, shape: tuple[int, ...], count: int, where: str, limits: DecodeLimits
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"{where}: {datatype} has no typed contents in the gRPC API; send raw_input_contents")
    values = getattr(spec.contents, field)
    if len(values) != count:
        raise BadRequest(f"{where}: contents has {len(values)} elements, expected {count} for shape {list(shape)}")
    if datatype == "BYTES":
        for i, element in enumerate(values):
            if len(element) > limits.max_bytes_element:
                raise PayloadTooLarge(
                    f"{where}: BYTES element {i} has {len(element)} bytes; the limit is {limits.max_bytes_element}"
                )
        return np.array(list(values), dtype=object).reshape(shape)
    dtype = DTYPES[datatype]
    array = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu" and array.size and (array.min() < np.iinfo(dtype).min or array.max() > np.iinfo(dtype).max):
        raise BadRequest(f"{where}: a value is out of range for {datatype}")
    return array.astype(dtype).reshape(shape)


def encode_infer_response(
    response: InferResponse, into: service_pb2.ModelInferResponse | None = None
) -> service_pb2.ModelInferResponse:
    """``InferResponse`` -> ``ModelInferResponse`` with every output as ``raw_output_contents``; written into
    ``into`` when given (a stream's reply fills its ``infer_response`` in place, where passing a finished
    message to the wrapper would copy it)."""
    message = service_pb2.ModelInferResponse() if into is None else into
    message.model_name = response.model_name
    message.model_version = response.model_version
    if response.id:
        message.id = response.id
    for tensor in response.outputs:
        entry = message.outputs.add()
        entry.name = tensor.name
        entry.datatype = tensor.datatype
        entry.shape.extend(tensor.shape)
        message.raw_output_contents.append(tensor_bytes_copy(tensor.data, tensor.datatype))
    return message
