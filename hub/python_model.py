"""Triton Python-backend model that runs a repository's ``model.onnx`` with ONNX Runtime.

The bundled dev tritonserver has no onnxruntime backend, so ``railgate hub`` serves each ONNX
model through this file. Triton's dynamic batcher hands ``execute`` several requests at once: those
whose inputs agree in shape past the batch dim are concatenated into one ONNX Runtime call and the
outputs split back, so batching pays here just as it does in the official onnxruntime backend.
Requests whose variable dims differ run as separate calls; a model with ``max_batch_size: 0`` has
no batch dim, so each of its requests runs alone.

A trap: every failed response gets its own ``pb_utils.TritonError``. Handing one error object to
several responses corrupts its message and crashes tritonserver (SIGSEGV) when batches fail at once.
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
        self.batching = int(config.get("max_batch_size", 0)) > 0
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, request in enumerate(requests):
            try:
                feed = {name: _for_onnxruntime(_input(request, name)) for name in self.inputs}
            except Exception as exc:  # a bad request fails alone
                responses[index] = _failed(f"bad input: {exc}")
                continue
            # Only requests that agree in every shape past the batch dim can be concatenated.
            key = tuple(a.shape[1:] for a in feed.values()) if self.batching else (index,)
            groups.setdefault(key, []).append((index, feed))
        for members in groups.values():
            for index, response in zip((i for i, _ in members), self._run([f for _, f in members]), strict=True):
                responses[index] = response
        return responses

    def _run(self, feeds):
        """One ONNX Runtime call for ``feeds`` (concatenated along the batch dim); one response each."""
        if len(feeds) == 1:
            joined = feeds[0]
        else:
            joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        try:
            results = self.session.run(self.outputs, joined)
        except Exception as exc:  # one bad batch answers each of its requests with the error
            return [_failed(f"onnxruntime failed: {exc}") for _ in feeds]
        if len(feeds) == 1:
            return [_response(self.outputs, results)]
        responses, start = [], 0
        for feed in feeds:
            size = feed[self.inputs[0]].shape[0]
            responses.append(_response(self.outputs, [r[start : start + size] for r in results]))
            start += size
        return responses


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"input {name!r} missing")
    return tensor.as_numpy()


def _failed(message):
    """A failed response with an error object of its own (never shared: see the module docstring)."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _response(names, arrays):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(n, _for_triton(a)) for n, a in zip(names, arrays, strict=True)]
    )


def _for_onnxruntime(array):
    """Triton hands BYTES tensors over as objects of ``bytes``; ONNX Runtime's strings are ``str``.

    ONNX Runtime's Python API takes text only (it encodes each ``str`` as strict UTF-8), so an
    element that is not UTF-8 fails its own request here, not its whole batch in ``session.run``.
    """
    if array.dtype != np.object_:
        return array
    return np.array([b.decode("utf-8") for b in array.flat], dtype=object).reshape(array.shape)


def _for_triton(array):
    if array.dtype != np.object_:
        return array
    return np.array([s.encode("utf-8") for s in array.flat], dtype=np.object_).reshape(array.shape)
