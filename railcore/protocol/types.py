"""Open Inference Protocol (KServe v2) value objects, as Triton serves them.

Tensors stay numpy arrays end to end. BYTES tensors are numpy object arrays of ``bytes``; BF16
tensors, which numpy has no type for, are ``uint16`` arrays holding the raw bfloat16 bits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from railcore.errors import BadRequest

# Triton datatype -> numpy dtype (little-endian, as the binary tensor extension sends them).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # raw bits: the upper half of an IEEE float32
    "BYTES": np.dtype(object),
}

_NUMPY_TO_TRITON = {v: k for k, v in DTYPES.items() if k not in ("BF16",)}


def triton_datatype(dtype: np.dtype) -> str:
    """The Triton datatype name for a numpy dtype (object and str/bytes arrays are BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_TRITON[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise BadRequest(f"numpy dtype {dtype} has no Triton datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise BadRequest(f"unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}") from None


class Encoding(enum.Enum):
    """How a request arrived; its reply goes back the same way."""

    JSON = "json"  # application/json, every tensor as JSON numbers/strings
    BINARY = "binary"  # Triton's binary tensor extension: JSON header + raw tensor bytes
    MSGPACK = "msgpack"  # application/msgpack, tensor data as raw little-endian bytes


@dataclass(slots=True)
class Tensor:
    """One named tensor. ``data`` has exactly ``shape`` (element count checked by the decoders)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs`` list. ``binary`` None means: as the request says."""

    name: str
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str  # "" for the default version
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    encoding: Encoding = Encoding.JSON

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` goes back as raw bytes (binary extension) rather than JSON data."""
        if self.encoding is not Encoding.BINARY and self.encoding is not Encoding.JSON:
            return False
        for requested in self.outputs:
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return bool(self.parameters.get("binary_data_output", False))


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
