"""What the gateway knows of each model, and the check a request passes before it joins a batch.

Model metadata comes from the backends (a hub's ``/v2/models/{m}`` and ``/config``, or the local
repository); nothing about a model is typed into the gateway's config. Validating each request
against it up front is what keeps one bad request from failing a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from railcore.errors import BadRequest, ModelNotFound
from railcore.protocol.types import InferRequest


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as Triton reports it: -1 for variable dims, the batch dim included

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    max_batch_size: int  # 0: the model does not batch
    preferred_batch_sizes: tuple[int, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # Triton's JSON model config
    # Derived once from the fields above (every request's check and reply reads them).
    input_meta: dict[str, TensorMeta] = field(init=False, repr=False, compare=False)
    output_datatypes: dict[str, str] = field(init=False, repr=False, compare=False)
    # Whether every input's dims past the batch dim are fixed: then all its requests batch together.
    fixed_dims: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_meta", {t.name: t for t in self.inputs})
        object.__setattr__(self, "output_datatypes", {t.name: t.datatype for t in self.outputs})
        object.__setattr__(self, "fixed_dims", all(d >= 0 for t in self.inputs for d in t.shape[1:]))

    def metadata(self, version: str = "") -> dict[str, Any]:
        """The v2 model metadata reply."""
        return {
            "name": self.name,
            "versions": [version] if version else list(self.versions),
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    def signature(self) -> tuple:
        """What must agree between two backends for them to serve the same model interchangeably."""
        return (self.inputs, self.outputs)

    def check_version(self, version: str) -> None:
        if version and version not in self.versions:
            raise ModelNotFound(
                f"model {self.name!r} has no version {version!r}; available: {', '.join(self.versions)}"
            )

    def validate(self, request: InferRequest, text_bytes: bool = True) -> int:
        """Check ``request`` against this model; return how many batch rows it carries.

        With ``text_bytes``, BYTES elements must be UTF-8: ONNX string tensors hold text, and one
        bad element would otherwise fail its whole batch at the hub. Raises BadRequest naming the
        input and what was expected.
        """
        self.check_version(request.version)
        expected = self.input_meta
        given = {t.name for t in request.inputs}
        missing = [n for n in expected if n not in given]
        if missing:
            raise BadRequest(
                f"model {self.name!r} needs input(s) {', '.join(missing)}; got {', '.join(given) or 'none'}"
            )
        rows = -1
        for tensor in request.inputs:
            meta = expected.get(tensor.name)
            if meta is None:
                raise BadRequest(f"model {self.name!r} has no input {tensor.name!r}; inputs are {', '.join(expected)}")
            if tensor.datatype != meta.datatype:
                raise BadRequest(f"input {tensor.name!r}: datatype {tensor.datatype}, expected {meta.datatype}")
            if text_bytes and tensor.datatype == "BYTES":
                _check_utf8(tensor.name, tensor.data)
            if not _shape_matches(tensor.shape, meta.shape):
                raise BadRequest(f"input {tensor.name!r}: shape {list(tensor.shape)}, expected {list(meta.shape)}")
            if self.max_batch_size > 0:
                batch = tensor.shape[0]
                if not 1 <= batch <= self.max_batch_size:
                    raise BadRequest(
                        f"input {tensor.name!r}: batch size {batch} outside 1..{self.max_batch_size} for {self.name!r}"
                    )
                if rows not in (-1, batch):
                    raise BadRequest(f"input {tensor.name!r}: batch size {batch} differs from the other inputs' {rows}")
                rows = batch
        known = self.output_datatypes
        for output in request.outputs:
            if output.name not in known:
                raise BadRequest(f"model {self.name!r} has no output {output.name!r}; outputs are {', '.join(known)}")
        return max(rows, 1)


def build_model_info(metadata: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    """ModelInfo from Triton's metadata and config replies (HTTP JSON or gRPC as_json alike)."""

    def metas(key: str) -> tuple[TensorMeta, ...]:
        return tuple(TensorMeta(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in metadata[key])

    batching = config.get("dynamic_batching") or {}
    return ModelInfo(
        name=metadata["name"],
        versions=tuple(str(v) for v in metadata.get("versions") or ("1",)),
        platform=metadata.get("platform", ""),
        inputs=metas("inputs"),
        outputs=metas("outputs"),
        max_batch_size=int(config.get("max_batch_size", 0)),
        preferred_batch_sizes=tuple(int(b) for b in batching.get("preferred_batch_size", ())),
        config=config,
    )


def _check_utf8(name: str, data: np.ndarray) -> None:
    for i, element in enumerate(data.flat):
        try:
            element.decode("utf-8") if isinstance(element, bytes) else str(element)
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r}: BYTES element {i} is not UTF-8 text, which this model's strings need"
            ) from None


def _shape_matches(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(shape) != len(expected):
        return False
    for size, wanted in zip(shape, expected, strict=True):  # noqa: SIM110 (a loop: all() over a generator costs ~0.3 us more)
        if size != wanted and wanted != -1:
            return False
    return True


TRITON_TO_CONFIG_TYPE = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BF16": "TYPE_BF16",
    "BYTES": "TYPE_STRING",
}
CONFIG_TYPE_TO_TRITON = {v: k for k, v in TRITON_TO_CONFIG_TYPE.items()}
