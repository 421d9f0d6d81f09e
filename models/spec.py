"""What a model in the repository is: its tensors, its batching, and how it is written to disk.

A Triton model repository holds ``<name>/config.pbtxt`` and ``<name>/1/model.onnx``. The config
written here is for the official Triton container's onnxruntime backend; ``hub/`` rewrites it for
the Python backend that the bundled dev server runs (see hub/repository.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import onnx

# ONNX IR and opset pinned for every model: onnx >= 1.23 writes IR 14 by default, which current
# onnxruntime refuses; IR <= 10 and opset <= 19 also load in older Triton containers.
IR_VERSION = 8
OPSET = 17
ML_OPSET = 3


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output, without its batch dimension."""

    name: str
    datatype: str  # Triton datatype name: FP32, INT64, BOOL, ...
    dims: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.dims)}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    metrics: dict[str, float] = field(default_factory=dict)


_PBTXT_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def _tensor_block(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    items = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t.dims)
        items.append(
            f'  {{\n    name: "{t.name}"\n    data_type: {_PBTXT_TYPES[t.datatype]}\n    dims: [ {dims} ]\n  }}'
        )
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(spec: ModelSpec) -> str:
    """Render the model's config.pbtxt for Triton's onnxruntime backend."""
    preferred = ", ".join(str(b) for b in spec.preferred_batch_sizes)
    return (
        f'name: "{spec.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {spec.max_batch_size}\n"
        + _tensor_block("input", spec.inputs)
        + _tensor_block("output", spec.outputs)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n"
        "}\n"
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
    )


def pin_versions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pin IR version and opsets, and drop fields that vary between tool versions."""
    model.ir_version = IR_VERSION
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
        elif opset.domain == "ai.onnx.ml":
            opset.version = ML_OPSET
    # skl2onnx lists the opsets from a set, in the order of the process's string hash seed: sorted
    # by domain, a build's bytes no longer depend on it ("" first, the order most seeds gave).
    opsets = sorted(model.opset_import, key=lambda o: o.domain)
    ordered = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in opsets]
    del model.opset_import[:]
    model.opset_import.extend(ordered)
    model.producer_name = "railgate"
    model.producer_version = "1"
    onnx.checker.check_model(model)
    return model


def write_model(repository: Path, spec: ModelSpec, model: onnx.ModelProto) -> str:
    """Write ``config.pbtxt`` and ``1/model.onnx``; return the ONNX file's sha256."""
    directory = repository / spec.name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    (directory / "1" / "model.onnx").write_bytes(data)
    (directory / "config.pbtxt").write_text(config_pbtxt(spec))
    return hashlib.sha256(data).hexdigest()
