"""``vision``: a small convolutional image classifier, heavy enough that batching pays on a CPU.

Input ``image`` FP32 [3, 64, 64] (CHW, values in 0..1); outputs ``label`` INT64 [1] and
``probabilities`` FP32 [10]. The weights are fixed-seed He-initialised, not trained: the model
stands for the compute shape of a camera classifier (about 0.2 GMAC per image), and its outputs
are deterministic, which is what routing, batching and equality tests need.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.spec import OPSET, ModelSpec, TensorSpec, pin_versions

SEED = 1
# (in_channels, out_channels, pool after)
_CONVS = ((3, 32, False), (32, 64, True), (64, 128, True), (128, 128, False))
CLASSES = 10


def build() -> tuple[ModelSpec, onnx.ModelProto]:
    rng = np.random.default_rng(SEED)
    nodes, inits = [], []
    x = "image"
    for i, (cin, cout, pool) in enumerate(_CONVS):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}_w"), numpy_helper.from_array(b, f"conv{i}_b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}_w", f"conv{i}_b"], [f"conv{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x = f"relu{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
    cin = _CONVS[-1][1]
    fc_w = (rng.standard_normal((cin, CLASSES)) * np.sqrt(1.0 / cin)).astype(np.float32)
    fc_b = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "vision",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 64, 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, CLASSES]),
        ],
        inits,
    )
    model = pin_versions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    spec = ModelSpec(
        name="vision",
        description="3x64x64 conv-net image classifier (fixed-seed weights, ~0.2 GMAC/image)",
        inputs=(TensorSpec("image", "FP32", (3, 64, 64)),),
        outputs=(TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (CLASSES,))),
        max_batch_size=32,
        preferred_batch_sizes=(8, 16, 32),
        max_queue_delay_us=2000,
    )
    return spec, model
