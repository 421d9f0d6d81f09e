"""A second model repository, written as a Triton user outside railgate would write one.

It exists to prove the gateway serves any valid Triton repository, not only the models built by
``models/build.py``: hand-written ``config.pbtxt`` files (not generated from ``ModelSpec``), two
inputs and two outputs, BYTES that the model parses (an ONNX ``Cast`` from string to int, so an
empty or non-numeric string fails at the hub), variable dims past the batch dim, a model with
``max_batch_size: 0``, a model with two versions, ``model_warmup`` samples, and every datatype.

    int_math        INT32 A, B [-1, 4] (batch 8)  -> SUM = A + B, DIFF = A - B
    str_math        BYTES A, B [-1, 4] decimal     -> SUM, DIFF as decimal BYTES (parses its strings)
    bytes_identity  BYTES IN [-1, -1] (variable)   -> OUT, the same strings (two versions: 1 and 2)
    nobatch_scale   FP32 X [2, -1], no batching    -> Y = 2 * X
    every_type      one [-1, 2] input per datatype -> <TYPE>_OUT, the same values (BF16 left out:
                    ONNX Runtime's Python API, which the dev hub runs, has no numpy bfloat16)

Dev and test tooling: the product never imports it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from models.spec import OPSET, pin_versions

_INT_MATH = """name: "int_math"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_INT32 dims: [ 4 ] }
]
output [
  { name: "SUM" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "DIFF" data_type: TYPE_INT32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""

_STR_MATH = """name: "str_math"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_STRING dims: [ 4 ] },
  { name: "B" data_type: TYPE_STRING dims: [ 4 ] }
]
output [
  { name: "SUM" data_type: TYPE_STRING dims: [ 4 ] },
  { name: "DIFF" data_type: TYPE_STRING dims: [ 4 ] }
]
dynamic_batching { }
model_warmup [
  {
    name: "decimal strings"
    batch_size: 2
    inputs { key: "A" value { data_type: TYPE_STRING dims: [ 4 ] input_data_file: "A" } }
    inputs { key: "B" value { data_type: TYPE_STRING dims: [ 4 ] input_data_file: "B" } }
  }
]
"""

_BYTES_IDENTITY = """name: "bytes_identity"
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy: { all { } }
input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

_NOBATCH_SCALE = """name: "nobatch_scale"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, -1 ] } ]
"""

# Triton datatype -> (config data_type, ONNX element type) for every_type.
EVERY_TYPE = {
    "BOOL": ("TYPE_BOOL", TensorProto.BOOL),
    "INT8": ("TYPE_INT8", TensorProto.INT8),
    "INT16": ("TYPE_INT16", TensorProto.INT16),
    "INT32": ("TYPE_INT32", TensorProto.INT32),
    "INT64": ("TYPE_INT64", TensorProto.INT64),
    "UINT8": ("TYPE_UINT8", TensorProto.UINT8),
    "UINT16": ("TYPE_UINT16", TensorProto.UINT16),
    "UINT32": ("TYPE_UINT32", TensorProto.UINT32),
    "UINT64": ("TYPE_UINT64", TensorProto.UINT64),
    "FP16": ("TYPE_FP16", TensorProto.FLOAT16),
    "FP32": ("TYPE_FP32", TensorProto.FLOAT),
    "FP64": ("TYPE_FP64", TensorProto.DOUBLE),
    "BYTES": ("TYPE_STRING", TensorProto.STRING),
}


def _every_type_config() -> str:
    inputs = ",\n".join(f'  {{ name: "{t}" data_type: {c} dims: [ 2 ] }}' for t, (c, _) in EVERY_TYPE.items())
    outputs = ",\n".join(f'  {{ name: "{t}_OUT" data_type: {c} dims: [ 2 ] }}' for t, (c, _) in EVERY_TYPE.items())
    return (
        f'name: "every_type"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\ndynamic_batching {{ }}\n"
    )


WARMUP_A = [b"1", b"2", b"3", b"4"]  # one batch row of 4 decimal strings; Triton repeats a file per row
WARMUP_B = [b"10", b"20", b"30", b"40"]


def _model(nodes: list, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    return pin_versions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def _info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def int_math() -> onnx.ModelProto:
    io = [None, 4]
    return _model(
        [helper.make_node("Add", ["A", "B"], ["SUM"]), helper.make_node("Sub", ["A", "B"], ["DIFF"])],
        [_info("A", TensorProto.INT32, io), _info("B", TensorProto.INT32, io)],
        [_info("SUM", TensorProto.INT32, io), _info("DIFF", TensorProto.INT32, io)],
        "int_math",
    )


def str_math() -> onnx.ModelProto:
    io = [None, 4]
    cast = TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["A"], ["a"], to=cast),
        helper.make_node("Cast", ["B"], ["b"], to=cast),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
        helper.make_node("Cast", ["sum"], ["SUM"], to=TensorProto.STRING),
        helper.make_node("Cast", ["diff"], ["DIFF"], to=TensorProto.STRING),
    ]
    return _model(
        nodes,
        [_info("A", TensorProto.STRING, io), _info("B", TensorProto.STRING, io)],
        [_info("SUM", TensorProto.STRING, io), _info("DIFF", TensorProto.STRING, io)],
        "str_math",
    )


def bytes_identity() -> onnx.ModelProto:
    io = [None, None]
    return _model(
        [helper.make_node("Identity", ["IN"], ["OUT"])],
        [_info("IN", TensorProto.STRING, io)],
        [_info("OUT", TensorProto.STRING, io)],
        "bytes_identity",
    )


def nobatch_scale() -> onnx.ModelProto:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return _model(
        [helper.make_node("Constant", [], ["k"], value=two), helper.make_node("Mul", ["X", "k"], ["Y"])],
        [_info("X", TensorProto.FLOAT, [2, None])],
        [_info("Y", TensorProto.FLOAT, [2, None])],
        "nobatch_scale",
    )


def every_type() -> onnx.ModelProto:
    io = [None, 2]
    return _model(
        [helper.make_node("Identity", [t], [f"{t}_OUT"]) for t in EVERY_TYPE],
        [_info(t, elem, io) for t, (_, elem) in EVERY_TYPE.items()],
        [_info(f"{t}_OUT", elem, io) for t, (_, elem) in EVERY_TYPE.items()],
        "every_type",
    )


def _bytes_file(elements: list[bytes]) -> bytes:
    """A warm-up ``input_data_file`` for TYPE_STRING: each element as 4-byte little-endian length + bytes."""
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def build_foreign_repository(target: Path) -> Path:
    """Write the repository under ``target`` and return it."""
    target = Path(target)
    models = {
        "int_math": (_INT_MATH, int_math(), ("1",)),
        "str_math": (_STR_MATH, str_math(), ("1",)),
        "bytes_identity": (_BYTES_IDENTITY, bytes_identity(), ("1", "2")),
        "nobatch_scale": (_NOBATCH_SCALE, nobatch_scale(), ("1",)),
        "every_type": (_every_type_config(), every_type(), ("1",)),
    }
    for name, (config, model, versions) in models.items():
        directory = target / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.pbtxt").write_text(config)
        for version in versions:
            (directory / version).mkdir(exist_ok=True)
            onnx.save(model, str(directory / version / "model.onnx"))
    warmup = target / "str_math" / "warmup"
    warmup.mkdir(exist_ok=True)
    (warmup / "A").write_bytes(_bytes_file(WARMUP_A))
    (warmup / "B").write_bytes(_bytes_file(WARMUP_B))
    return target
