"""Triton's raw tensor bytes: little-endian, row-major, BYTES elements as 4-byte length + payload.

Shared by the binary tensor extension (bytes after the JSON header) and msgpack (``bin`` data).
Numeric tensors are zero-copy views of the buffer they arrive in; only BYTES tensors are copied, into
object arrays of ``bytes``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol import json_codec
from railcore.protocol.types import DTYPES, numpy_dtype

_LENGTH = struct.Struct("<I")


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Row-major elements of a BYTES tensor, each as a 4-byte little-endian length then its bytes.

    ``str`` elements (and anything else, as tritonclient does) are sent as their UTF-8 text.
    """
    parts: list[bytes] = []
    for item in arr.flat:
        data = bytes(item) if isinstance(item, bytes | bytearray | memoryview) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int, *, max_element: int | None = None) -> np.ndarray:
    """Exactly ``count`` length-prefixed elements from ``buf``, as a flat object array of ``bytes``.

    Every byte of ``buf`` must belong to an element: a short or over-long buffer is a BadRequest, an element
    over ``max_element`` bytes is PayloadTooLarge.
    """
    view = memoryview(buf)
    size = len(view)
    # Each element costs at least its prefix: refuse before allocating an object array the body cannot fill.
    if count * _LENGTH.size > size:
        raise BadRequest(f"BYTES data has {size} bytes, too few for {count} elements of at least 4 bytes each")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if size - offset < _LENGTH.size:
            raise BadRequest(f"BYTES element {i} has no 4-byte length prefix ({size - offset} bytes left)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > size - offset:
            raise BadRequest(
                f"BYTES element {i}: length prefix {length} runs past the end of the tensor ({size - offset} bytes left)"
            )
        if max_element is not None and length > max_element:
            raise PayloadTooLarge(f"BYTES element {i} has {length} bytes; the limit is {max_element}")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise BadRequest(f"BYTES data has {size - offset} bytes left over after its {count} elements")
    return out


def tensor_from_buffer(
    buf: memoryview, datatype: str, shape: Sequence[int], count: int, *, max_bytes_element: int
) -> np.ndarray:
    """The tensor held in ``buf``, shaped ``shape``: a read-only view for numeric types, a copy for BYTES."""
    if datatype == "BYTES":
        return deserialize_bytes_tensor(buf, count, max_element=max_bytes_element).reshape(shape)
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise BadRequest(f"data has {len(buf)} bytes, expected {expected} for {datatype} {list(shape)}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def tensor_bytes(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """The raw little-endian bytes of a tensor; a view of ``arr`` when it is already C-contiguous and little-endian."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(arr)
    dtype = DTYPES[datatype]
    if type(arr) is np.ndarray and arr.dtype == dtype and arr.flags.c_contiguous and arr.size:
        # The common case: the same view as below, in 2 calls, not 4 (~0.2 us less).
        return memoryview(arr).cast("B")  # type: ignore[arg-type]
    # ascontiguousarray fixes strides, byte order or width.
    flat = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    return flat.view(np.uint8).data


def tensor_bytes_copy(arr: np.ndarray, datatype: str) -> bytes:
    """``tensor_bytes`` as a ``bytes`` of its own (what protobuf's bytes fields take). An array of the datatype's
    dtype is one ``tobytes`` (row-major, in that dtype's little-endian order): ~0.07 us against ~0.5 for
    ``bytes()`` of the view."""
    if type(arr) is np.ndarray and datatype != "BYTES" and arr.dtype == DTYPES[datatype]:
        return arr.tobytes()
    return bytes(tensor_bytes(arr, datatype))


def decode_outputs(raw: bytes, header_length: int | None, wanted: list[str]) -> dict[str, np.ndarray]:
    """Parse a hub's infer reply (binary extension or plain JSON) into arrays, zero-copy."""
    view = memoryview(raw)
    header = json_codec.loads(view[:header_length] if header_length is not None else raw)
    offset = header_length or 0
    results: dict[str, np.ndarray] = {}
    for out in header["outputs"]:
        dtype = numpy_dtype(out["datatype"])
        shape = tuple(int(d) for d in out["shape"])
        count = math.prod(shape)  # plain ints: numpy's reduction costs more than the rest of this loop
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = view[offset : offset + size]
            if len(chunk) != size:
                raise ValueError(f"output {out['name']!r} runs past the end of the reply")
            offset += size
            if dtype.kind == "O":
                array = deserialize_bytes_tensor(chunk, count)
            else:
                array = np.frombuffer(chunk, dtype=dtype, count=count)
        elif dtype.kind == "O":
            array = np.array([s.encode() if isinstance(s, str) else s for s in out["data"]], dtype=object)
        else:
            array = np.asarray(out["data"], dtype=dtype)
        results[out["name"]] = array.reshape(shape)
    missing = [n for n in wanted if n not in results]
    if missing:
        raise ValueError(f"reply lacks output(s) {', '.join(missing)}")
    return results
