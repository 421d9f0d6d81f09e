"""Triton Python-backend model that runs a repository's ``model.onnx`` with ONNX Runtime.

The bundled dev tritonserver has no onnxruntime backend, so ``railgate hub`` serves each ONNX
model through this file. Triton's dynamic batcher hands ``execute`` several requests at once: they
are concatenated into one ONNX Runtime call and the outputs are split back, so batching pays here
just as it does in the official onnxruntime backend.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        columns: dict[str, list] = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(columns[self.inputs[0]][-1].shape[0])
        feed = {
            name: _for_onnxruntime(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
            for name, arrays in columns.items()
        }
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # one bad batch answers each of its requests with the error
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(n, _for_triton(r[start : start + size]))
                for n, r in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses


def _for_onnxruntime(array):
    """Triton hands BYTES tensors over as objects of ``bytes``; ONNX Runtime's strings are ``str``."""
    if array.dtype != np.object_:
        return array
    return np.array([b.decode("utf-8", "surrogateescape") for b in array.flat], dtype=object).reshape(array.shape)


def _for_triton(array):
    if array.dtype != np.object_:
        return array
    return np.array([s.encode("utf-8", "surrogateescape") for s in array.flat], dtype=np.object_).reshape(array.shape)
