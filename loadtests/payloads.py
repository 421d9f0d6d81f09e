"""Request bodies for the four models in the gateway's three encodings, built once, before the test.

A second, independent implementation of the wire formats (README "Encodings"): v2 JSON, Triton's
binary tensor extension and msgpack. Building bodies per request would measure the load generator;
each user picks from a pool built at import. ``reply_problem`` checks a reply carries the outputs
and rows asked for, so a wrong answer counts as a failure, not just a wrong status.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

ENCODINGS = ("json", "binary", "msgpack")
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's input and outputs as the gateway serves them (README "The models")."""

    name: str
    input: str
    datatype: str
    dims: tuple[int, ...]
    outputs: tuple[str, ...]


MODELS: dict[str, ModelSpec] = {
    "digits": ModelSpec("digits", "pixels", "FP32", (64,), ("label", "probabilities")),
    "vision": ModelSpec("vision", "image", "FP32", (3, 64, 64), ("label", "probabilities")),
    "anomaly": ModelSpec("anomaly", "window", "FP32", (128,), ("score", "anomaly")),
    "vocab": ModelSpec("vocab", "word", "BYTES", (1,), ("word_id", "echo")),
}

# Known digit names, unknown words, non-ASCII UTF-8 and the empty string: every path a word can take.
WORDS = [b"zero", b"three", b"seven", b"nine", b"eleven", "f\u00fcnf".encode(), "\u4e09".encode(), b""]


@dataclass(frozen=True, slots=True)
class Payload:
    """One ready-to-send inference request."""

    model: str
    encoding: str
    body: bytes
    headers: Mapping[str, str]
    rows: int
    outputs: tuple[str, ...]
    label: str = field(default="")  # locust's stats name; "" means "<model> [<encoding>]"

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        rows = f" x{self.rows}" if self.rows > 1 else ""
        return f"{self.model}{rows} [{self.encoding}]"


def sample_tensor(model: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` realistic inputs for ``model``: real handwritten digits where scikit-learn has them."""
    spec = MODELS[model]
    if model == "vocab":
        return np.array([WORDS[i] for i in rng.integers(0, len(WORDS), rows)], dtype=object).reshape(rows, 1)
    if model == "digits":
        digits = _digits()
        if digits is not None:
            return digits[rng.integers(0, len(digits), rows)]
        return (rng.random((rows, 64)) * 16).astype(np.float32)
    if model == "anomaly":  # 32 steps x 4 sensor channels of smooth signal plus noise, time-major
        t = np.arange(32, dtype=np.float32)[:, None]
        phase = rng.random((rows, 1, 4)) * 2 * np.pi
        signal = np.sin(t / 5.0 + phase) + 0.05 * rng.standard_normal((rows, 32, 4))
        return signal.reshape(rows, 128).astype(np.float32)
    return rng.random((rows, *spec.dims)).astype(np.float32)


_DIGITS: list[np.ndarray | None] = []


def _digits() -> np.ndarray | None:
    """scikit-learn's bundled 8x8 digits (on disk, no download), or None where it is not installed."""
    if not _DIGITS:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            _DIGITS.append(None)
        else:
            _DIGITS.append(load_digits().data.astype(np.float32))
    return _DIGITS[0]


def encode(model: str, encoding: str, tensor: np.ndarray, label: str = "") -> Payload:
    """The request carrying ``tensor`` (rows first) as ``model``'s input, in ``encoding``."""
    spec = MODELS[model]
    rows = tensor.shape[0]
    shape = list(tensor.shape)
    head: dict[str, Any] = {"name": spec.input, "datatype": spec.datatype, "shape": shape}
    if encoding == "json":
        data = [b.decode("utf-8") for b in tensor.flat] if spec.datatype == "BYTES" else tensor.ravel().tolist()
        body = json.dumps({"inputs": [{**head, "data": data}]}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
    elif encoding == "binary":
        raw = raw_bytes(tensor, spec.datatype)
        document = {
            "inputs": [{**head, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in spec.outputs],
        }
        header = json.dumps(document, separators=(",", ":")).encode()
        body = header + raw
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    elif encoding == "msgpack":
        body = msgpack.packb({"inputs": [{**head, "data": raw_bytes(tensor, spec.datatype)}]}, use_bin_type=True)
        headers = {"Content-Type": "application/msgpack"}
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return Payload(model, encoding, body, headers, rows, spec.outputs, label)


def raw_bytes(tensor: np.ndarray, datatype: str) -> bytes:
    """Triton's raw tensor bytes: little-endian C order; BYTES as 4-byte length + bytes per element."""
    if datatype != "BYTES":
        return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()
    return b"".join(_LENGTH.pack(len(item)) + item for item in tensor.flat)


def pool(model: str, encoding: str, *, count: int = 16, rows: int = 1, seed: int = 0) -> list[Payload]:
    """``count`` different requests for ``model`` in ``encoding``, deterministic in ``seed``."""
    rng = np.random.default_rng([seed, sorted(MODELS).index(model), ENCODINGS.index(encoding), rows])
    return [encode(model, encoding, sample_tensor(model, rows, rng)) for _ in range(count)]


class PayloadPools:
    """Every pool the users draw from, keyed by (model, encoding, rows), built on first use and kept."""

    def __init__(self, seed: int = 0, count: int = 16) -> None:
        self.seed = seed
        self.count = count
        self._pools: dict[tuple[str, str, int], list[Payload]] = {}

    def get(self, model: str, encoding: str, rows: int = 1) -> list[Payload]:
        key = (model, encoding, rows)
        if key not in self._pools:
            self._pools[key] = pool(model, encoding, count=self.count, rows=rows, seed=self.seed)
        return self._pools[key]

    def pick(self, model: str, encoding: str, rows: int = 1, rng: random.Random | None = None) -> Payload:
        return (rng or random).choice(self.get(model, encoding, rows))


# -- replies ---------------------------------------------------------------------------------------


def reply_problem(payload: Payload, headers: Mapping[str, str], body: bytes) -> str | None:
    """What is wrong with a 200 reply to ``payload`` (missing output, wrong rows), or None."""
    try:
        if payload.encoding == "msgpack":
            document = msgpack.unpackb(body, raw=False)
            binary_section = 0
        else:
            length = headers.get(HEADER_LENGTH)
            split = int(length) if length is not None else len(body)
            document = json.loads(body[:split])
            binary_section = len(body) - split
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        return f"undecodable {payload.encoding} reply: {type(exc).__name__}"
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
        return f"{payload.encoding} reply without outputs"
    outputs = {o.get("name"): o for o in document["outputs"] if isinstance(o, dict)}
    missing = [name for name in payload.outputs if name not in outputs]
    if missing:
        return f"reply lacks output {missing[0]!r}"
    for name in payload.outputs:
        shape = outputs[name].get("shape") or [0]
        if shape[0] != payload.rows:
            return f"output {name!r} has {shape[0]} rows, sent {payload.rows}"
    declared = sum(o.get("parameters", {}).get("binary_data_size", 0) for o in outputs.values())
    if declared != binary_section:
        return f"binary section is {binary_section} bytes, the header declares {declared}"
    return None


def error_text(headers: Mapping[str, str], body: bytes) -> str:
    """The gateway's ``{"error": ...}`` message from an error reply, in JSON or msgpack."""
    try:
        if "msgpack" in headers.get("Content-Type", ""):
            document = msgpack.unpackb(body, raw=False)
        else:
            document = json.loads(body)
        return str(document["error"])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return body[:120].decode("utf-8", "replace")
