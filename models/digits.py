"""``digits``: a handwritten-digit classifier trained offline on scikit-learn's bundled 8x8 digits.

Input ``pixels`` FP32 [64] (grey levels 0..16, row-major); outputs ``label`` INT64 [1] and
``probabilities`` FP32 [10].
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.spec import ModelSpec, TensorSpec, pin_versions

SEED = 0


def _train():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    clf = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=SEED),
    )
    # One BLAS thread: a matrix product split over more threads sums in another order, and the
    # trained weights (so the file's bytes) would depend on the machine's thread count.
    with threadpool_limits(limits=1):
        clf.fit(x_train, y_train)
    return clf, x_test, y_test


def _to_onnx(clf) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        clf,
        "digits",
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(clf.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = model.graph
    # skl2onnx's label is [N]; Triton wants every output to have a dim past the batch one.
    flat = graph.output[0].name
    graph.output[0].name = "label"
    for node in graph.node:
        node.output[:] = ["label_flat" if o == flat else o for o in node.output]
    axes = helper.make_tensor("label_axes", TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    graph.node.append(helper.make_node("Unsqueeze", ["label_flat", "label_axes"], ["label"]))
    del graph.output[0]
    graph.output.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]))
    prob = graph.output[1]
    prob_name = prob.name
    if prob_name != "probabilities":
        for node in graph.node:
            node.output[:] = ["probabilities" if o == prob_name else o for o in node.output]
        del graph.output[1]
        graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10]))
    return pin_versions(model)


def build() -> tuple[ModelSpec, onnx.ModelProto]:
    clf, x_test, y_test = _train()
    model = _to_onnx(clf)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    label, _ = session.run(None, {"pixels": x_test})
    accuracy = float(np.mean(label[:, 0] == y_test))
    spec = ModelSpec(
        name="digits",
        description="8x8 handwritten digit classifier (MLP trained on scikit-learn's digits, seed 0)",
        inputs=(TensorSpec("pixels", "FP32", (64,)),),
        outputs=(TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (10,))),
        max_batch_size=256,
        preferred_batch_sizes=(32, 64, 128),
        max_queue_delay_us=500,
        metrics={"heldout_accuracy": round(accuracy, 4), "heldout_samples": len(y_test)},
    )
    return spec, model
