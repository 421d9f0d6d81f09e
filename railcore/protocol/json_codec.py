"""Tensor data as JSON: parsing ``data`` lists into numpy arrays and back, BF16 included.

orjson parses and writes (several times faster than the stdlib), and the stdlib ``json`` takes over
wherever the two would differ, so what is accepted and written is what the stdlib alone did:
- input orjson refuses (NaN/Infinity, UTF-16/32, lone surrogates) is parsed again by the stdlib,
  which reads it or names the problem as before; orjson reads an integer past 64 bits as a float,
  so a body with an integer token of 19 digits or more (where such integers begin) goes to the stdlib
  alone (a fraction's or an exponent's long run of digits does not);
- orjson writes NaN and Infinity as ``null``: a float tensor that holds one is marked (``NonFinite``)
  and its document written by the stdlib, as ``NaN``/``Infinity`` (what tritonclient's rapidjson reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol.types import DTYPES

_VALUE_KINDS = {
    dict: "object",
    list: "list",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    bytes: "bin",
}


def kind_of(value: Any) -> str:
    """The protocol-level kind of a decoded JSON or msgpack value, for error messages."""
    return "null" if value is None else _VALUE_KINDS.get(type(value), type(value).__name__)


# What parsing one JSON token can cost in Python objects at most, in bytes (64-bit CPython): a value after a
# comma is at most a float (24) and its list slot (8); a list or dict is 56-64 before its slots; a dict
# entry's key is a str (49+) with its slot; a string's two quotes share its str header (49+).
_COST_PER_COMMA, _COST_PER_CONTAINER, _COST_PER_COLON, _COST_PER_QUOTE = 32, 64, 64, 32
# The most one byte of a body can add to ``python_bytes_bound``: itself and the dearest token it can be.
MAX_PYTHON_BYTES_PER_BYTE = 1 + max(_COST_PER_COMMA, _COST_PER_CONTAINER, _COST_PER_COLON, _COST_PER_QUOTE)


def python_bytes_bound(body: bytes | bytearray) -> int:
    """An upper bound on the memory ``json.loads(body)`` would allocate, from byte counts taken before
    parsing (a few C passes over the body, no objects). Tokens inside strings are counted too: it
    over-estimates a text-heavy body, never under-estimates a structure-heavy one."""
    containers = body.count(b"[") + body.count(b"{")
    return (
        len(body)
        + _COST_PER_COMMA * body.count(b",")
        + _COST_PER_CONTAINER * containers
        + _COST_PER_COLON * body.count(b":")
        + _COST_PER_QUOTE * body.count(b'"')
    )


def loads(body: bytes | bytearray | memoryview, max_python_bytes: int | None = None) -> Any:
    """The parsed JSON document; any parse failure (bad UTF-8, deep nesting, huge integers) is a BadRequest.

    With ``max_python_bytes``, a document that could make more than that in Python objects is refused
    (413) before it is parsed: ``json.loads`` builds the whole tree before any tensor limit applies.
    """
    raw = body if isinstance(body, bytes | bytearray) else bytes(body)
    # Counted only where it could matter: the five counts cost ~0.9 ms per 250 KB body on the loop.
    if max_python_bytes is not None and len(raw) * MAX_PYTHON_BYTES_PER_BYTE > max_python_bytes:
        bound = python_bytes_bound(raw)
        if bound > max_python_bytes:
            raise PayloadTooLarge(
                f"JSON body of {len(raw)} bytes could take {bound} bytes as Python objects; the limit is "
                f"{max_python_bytes} (send tensors as binary data or msgpack)"
            )
    if not _long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # what orjson refuses, the stdlib may read (NaN, 1e400, UTF-16, lone surrogates) or says why not
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None


# Digits all read as 0, to find runs of them with bytes.find (a regex over every byte of a large body
# costs several ms: as much as the stdlib's parse it is meant to spare).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_RUN = b"0" * 19


def _long_integer(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` may hold an integer token past 64 bits (which orjson would read as a float): a
    run of 19 digits or more from a token's start. A run after a point, an exponent's e or its + is a
    fraction or an exponent, which orjson reads as the stdlib does; float32 values written as JSON are
    full of such runs (0.00085486622992902994), and each such body sent to the stdlib cost ~8 ms per
    236 KB image on the event loop. A run after a minus may be a negative integer's: the stdlib reads it."""
    flat = raw.translate(_DIGITS_AS_ZERO)
    at = flat.find(_RUN)  # the leftmost match is where a run starts
    while at != -1:
        if at == 0 or raw[at - 1] not in b".eE+":
            return True
        end = at + len(_RUN)
        while end < len(flat) and flat[end] == 0x30:  # the rest of this run
            end += 1
        at = flat.find(_RUN, end)
    return False


class NonFinite(list):  # type: ignore[type-arg]
    """A tensor's JSON data that holds NaN or Infinity: its document is written by the stdlib."""


def _plain(value: Any) -> Any:
    """orjson's fallback for subclasses of its native types: the base value (a StrEnum is its str)."""
    if isinstance(value, NonFinite):
        raise TypeError("non-finite floats")  # orjson would write null: the stdlib writes NaN/Infinity
    base: Any
    for base in (str, int, float, list, dict, tuple):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and Infinity are written as tritonclient (rapidjson) reads them."""
    try:
        return orjson.dumps(document, default=_plain, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")


def array_from_json(
    data: Any, datatype: str, shape: Sequence[int], count: int, *, max_depth: int, max_bytes_element: int
) -> np.ndarray:
    """The tensor a JSON ``data`` value holds, shaped ``shape``; data may be flat or nested, row-major."""
    if not isinstance(data, list):
        raise BadRequest(f"data must be a list, got {kind_of(data)}")
    if datatype == "BYTES":
        arr = _bytes_elements(data, max_depth, max_bytes_element)
    else:
        _check_depth(data, max_depth)
        arr = _numbers(data, datatype)
    if arr.size != count:
        raise BadRequest(f"shape {list(shape)} holds {count} elements but data has {arr.size}")
    return arr.reshape(shape)


def json_data(arr: np.ndarray, datatype: str) -> list[Any]:
    """A tensor as a flat JSON-ready list. BYTES become text: invalid UTF-8 is replaced by U+FFFD, so a client
    that needs exact bytes must ask for binary output."""
    if datatype == "BYTES":
        return [x if isinstance(x, str) else bytes(x).decode("utf-8", errors="replace") for x in arr.flat]
    flat = np.asarray(arr, dtype=DTYPES[datatype]).reshape(-1)
    if datatype == "BF16":
        flat = bf16_to_float32(flat)
    values = flat.tolist()
    if flat.dtype.kind == "f" and not _all_finite(values, flat):
        return NonFinite(values)
    return values


def _all_finite(values: list[float], flat: np.ndarray) -> bool:
    """Whether every float is finite. A sum is finite only if every term is (inf and NaN propagate), and for a
    few hundred floats summing the list costs a tenth of ``np.isfinite(...).all()``; a sum past the float
    range (large finite float64s) is checked again element by element."""
    if len(values) <= _SUM_CHECK_MAX and math.isfinite(sum(values)):
        return True
    return bool(np.isfinite(flat).all())


_SUM_CHECK_MAX = 256  # the sum costs ~3.4 us per 1,000 floats, np.isfinite ~1.4 us whatever the count


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of float32 values, rounded to nearest even; NaNs stay (quiet) NaNs."""
    floats = np.ascontiguousarray(values, dtype=np.float32)
    bits = floats.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # Rounding could carry a NaN's mantissa into the exponent (or past the sign): keep it a NaN instead.
    quiet_nan = (bits >> 16) | 0x0040
    return np.where(np.isnan(floats), quiet_nan, rounded).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bits: exact, since bfloat16 is the upper half of a float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _numbers(data: list[Any], datatype: str) -> np.ndarray:
    """A numeric tensor from JSON numbers, refusing values of the wrong kind or out of the datatype's range.

    numpy infers the values' type in one C pass; the cast to the datatype is then an array operation. Inferring
    first (rather than ``asarray(data, dtype)``) is what keeps ``"7"`` or ``1.5`` from being silently cast.
    """
    try:
        inferred = np.asarray(data)
    except ValueError:
        raise BadRequest(f"{datatype} data must be a rectangular list of numbers") from None
    if inferred.size == 0:
        return np.empty(inferred.shape, dtype=DTYPES[datatype])
    if datatype == "BOOL":
        if inferred.dtype.kind != "b":
            raise BadRequest("BOOL data must hold only true/false")
        return inferred
    if datatype == "BF16" or DTYPES[datatype].kind == "f":
        # Floats take integers too: a JSON 1 is a fine FP32.
        if inferred.dtype.kind not in "iuf":
            raise BadRequest(f"{datatype} data must hold only numbers")
        if datatype == "BF16":
            return float32_to_bf16(_narrowed(inferred, np.dtype(np.float32)))
        return _narrowed(inferred, DTYPES[datatype])
    return _integers(data, inferred, datatype)


def _integers(data: list[Any], inferred: np.ndarray, datatype: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    info = np.iinfo(dtype)
    refusal = BadRequest(f"{datatype} data must hold only integers in [{info.min}, {info.max}]")
    if inferred.dtype.kind not in "iu":
        if datatype != "UINT64" or inferred.dtype.kind not in "fO":
            raise refusal
        # numpy infers a lossy float64 for ints mixing [2**63, 2**64) with smaller ones: check those one by one.
        objects = np.asarray(data, dtype=object)
        if not all(type(v) is int and 0 <= v <= info.max for v in objects.flat):
            raise refusal
        return objects.astype(dtype)
    # Python ints compare exactly; numpy would compare uint64 with int64 bounds as float64.
    if int(inferred.min()) < info.min or int(inferred.max()) > info.max:
        raise refusal
    return inferred.astype(dtype, copy=False)


# numpy 1.x's floating-point error state is an object a thread can read and set directly: that costs ~0.2 us,
# against ~2.3 for ``np.errstate`` (its Python wrapper builds and compares dicts), once per JSON float input.
# numpy 2 has no ``seterrobj`` (its ``errstate`` is cheaper): it takes the errstate, and nothing here reads the
# error-mode constants (such as ``SHIFT_OVERFLOW``) of a numpy that has no error object.
_ERROR_OBJECT = hasattr(np, "seterrobj")
_OVERFLOW_MODE_BITS = 7 << np.SHIFT_OVERFLOW if _ERROR_OBJECT else 0  # overflow's 3-bit mode; 0 is ERR_IGNORE


def _narrowed(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` cast to ``dtype``; floats too large for a narrower type become infinities, as in IEEE arithmetic."""
    if arr.dtype == dtype:
        return arr
    if not _ERROR_OBJECT:
        with np.errstate(over="ignore"):
            return arr.astype(dtype)
    saved = np.geterrobj()
    np.seterrobj([saved[0], saved[1] & ~_OVERFLOW_MODE_BITS, saved[2]])
    try:
        return arr.astype(dtype)
    finally:
        np.seterrobj(saved)


def _check_depth(data: list[Any], max_depth: int) -> None:
    """Refuse data nested deeper than ``max_depth`` before numpy walks it.

    Only the first-element chain is followed: numpy rejects any other branch that is deeper (ragged).
    """
    depth = 0
    item: Any = data
    while isinstance(item, list):
        depth += 1
        if depth > max_depth:
            raise BadRequest(f"data nests lists more than {max_depth} deep")
        item = item[0] if item else None


def _bytes_elements(data: list[Any], max_depth: int, max_bytes_element: int) -> np.ndarray:
    """A flat object array of the UTF-8 encodings of JSON strings, nested lists flattened row-major.

    An explicit stack of iterators keeps deep nesting a BadRequest rather than a RecursionError.
    """
    elements: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= max_depth:
                    raise BadRequest(f"data nests lists more than {max_depth} deep")
                stack.append(iter(item))
                break
            elements.append(_utf8(item, len(elements), max_bytes_element))
        else:
            stack.pop()
    arr = np.empty(len(elements), dtype=object)
    arr[:] = elements
    return arr


def _utf8(item: Any, index: int, max_bytes_element: int) -> bytes:
    if not isinstance(item, str):
        raise BadRequest(f"BYTES element {index} must be a string, got {kind_of(item)}")
    try:
        encoded = item.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"BYTES element {index} is not valid Unicode (lone surrogate escape)") from None
    if len(encoded) > max_bytes_element:
        raise PayloadTooLarge(f"BYTES element {index} has {len(encoded)} bytes; the limit is {max_bytes_element}")
    return encoded
