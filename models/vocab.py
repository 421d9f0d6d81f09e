"""``vocab``: a BYTES-in, BYTES-out model: looks words up in the digit-name vocabulary.

Input ``word`` BYTES [1] (UTF-8); outputs ``word_id`` INT64 [1] (0..9 for "zero".."nine", -1 for
anything else) and ``echo`` BYTES [1] (the word itself). Small, but it carries variable-length
strings through every encoding, the batcher and both backends, which numeric models cannot.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from models.spec import ML_OPSET, OPSET, ModelSpec, TensorSpec, pin_versions

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def build() -> tuple[ModelSpec, onnx.ModelProto]:
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["word"],
            ["word_id"],
            domain="ai.onnx.ml",
            keys_strings=list(WORDS),
            values_int64s=list(range(len(WORDS))),
            default_int64=-1,
        ),
        helper.make_node("Identity", ["word"], ["echo"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vocab",
        [helper.make_tensor_value_info("word", TensorProto.STRING, [None, 1])],
        [
            helper.make_tensor_value_info("word_id", TensorProto.INT64, [None, 1]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, [None, 1]),
        ],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    model = pin_versions(helper.make_model(graph, opset_imports=opsets))
    spec = ModelSpec(
        name="vocab",
        description="digit-name vocabulary lookup: BYTES word in, INT64 id and BYTES echo out",
        inputs=(TensorSpec("word", "BYTES", (1,)),),
        outputs=(TensorSpec("word_id", "INT64", (1,)), TensorSpec("echo", "BYTES", (1,))),
        max_batch_size=256,
        preferred_batch_sizes=(32, 64),
        max_queue_delay_us=500,
    )
    return spec, model
