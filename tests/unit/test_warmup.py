"""Warm-up data and failures: model_warmup samples as Triton defines them, valid data otherwise,
and a model whose warm-up fails still served (no real hub: a backend that answers or refuses)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest

from gateway.backends import Backend, BackendKind
from gateway.warmup import Fill, warm_up, warmup_batches, warmup_inputs, warmup_samples
from railcore.catalog import ModelInfo, TensorMeta
from railcore.errors import HubError

STR_MATH_WARMUP = [
    {
        "name": "decimal strings",
        "batch_size": 2,
        "inputs": {
            "A": {"data_type": "TYPE_STRING", "dims": ["4"], "input_data_file": "A"},  # gRPC's JSON: int64 as text
            "B": {"data_type": "TYPE_STRING", "dims": [4], "input_data_file": "B"},
        },
    }
]


def model(
    name: str, inputs: dict[str, tuple[str, tuple[int, ...]]], max_batch: int = 8, warmup: list | None = None
) -> ModelInfo:
    tensors = tuple(TensorMeta(n, dt, shape) for n, (dt, shape) in inputs.items())
    config: dict[str, Any] = {"model_warmup": warmup} if warmup else {}
    return ModelInfo(name, ("1",), "onnxruntime_onnx", tensors, tensors, max_batch, config=config)


def test_without_samples_bytes_get_a_decimal_string_and_numbers_zeros() -> None:
    info = model("m", {"S": ("BYTES", (-1, 4)), "X": ("FP32", (-1, 3)), "N": ("INT64", (-1, 1))})
    inputs = warmup_inputs(info, rows=2)
    assert inputs["S"].shape == (2, 4) and set(inputs["S"].flat) == {b"0"}
    assert inputs["X"].dtype == np.float32 and not inputs["X"].any() and inputs["X"].shape == (2, 3)
    assert inputs["N"].dtype == np.int64 and inputs["N"].shape == (2, 1)


def test_variable_dims_get_one_element_and_a_model_without_batching_no_batch_dim() -> None:
    assert warmup_inputs(model("v", {"IN": ("BYTES", (-1, -1))}, 4), rows=3)["IN"].shape == (3, 1)
    nobatch = model("n", {"X": ("FP32", (2, -1))}, max_batch=0)
    assert [b["X"].shape for b in warmup_batches(nobatch)] == [(2, 1)]


def test_input_data_file_samples_fall_back_to_valid_data_at_their_batch_size() -> None:
    info = model("str_math", {"A": ("BYTES", (-1, 4)), "B": ("BYTES", (-1, 4))}, warmup=STR_MATH_WARMUP)
    (sample,) = warmup_samples(info)
    assert sample.batch_size == 2 and sample.inputs["A"].dims == (4,) and sample.inputs["A"].fill is Fill.VALID
    batches = warmup_batches(info)
    assert batches[0]["A"].shape == (2, 4) and set(batches[0]["A"].flat) == {b"0"}
    # The gateway's own batch sizes are warmed too, the sample's size once.
    assert sorted(b["A"].shape[0] for b in batches) == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("datatype", "spec", "check"),
    [
        ("FP32", {"zero_data": True}, lambda a: not a.any()),
        ("INT32", {"random_data": True}, lambda a: a.dtype == np.int32 and ((a >= 0) & (a < 10)).all()),
        ("FP16", {"random_data": True}, lambda a: a.dtype == np.float16 and ((a >= 0) & (a < 1)).all()),
        ("BOOL", {"random_data": True}, lambda a: a.dtype == np.bool_),
        ("BYTES", {"zero_data": True}, lambda a: set(a.flat) == {b""}),  # Triton's zero buffer: lengths of 0
        ("BYTES", {"random_data": True}, lambda a: set(a.flat) == {b""}),  # Triton: random is zero for strings
    ],
)
def test_zero_and_random_samples_follow_triton(datatype: str, spec: dict, check: Any) -> None:
    config_type = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    warmup = [{"name": "s", "batch_size": 3, "inputs": {"X": {"data_type": config_type, "dims": [5], **spec}}}]
    info = model("m", {"X": (datatype, (-1, 5))}, warmup=warmup)
    sample = warmup_inputs(info, 3, warmup_samples(info)[0])["X"]
    assert sample.shape == (3, 5) and check(sample)


class RefusingBackend(Backend):
    """Answers every model's batch with zeros shaped like its inputs, except ``refused`` models'."""

    kind = BackendKind.HUB

    def __init__(self, models: list[ModelInfo], refused: set[str]) -> None:
        super().__init__("west-1")
        self.models = {m.name: m for m in models}
        self.refused = refused
        self.calls: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    async def discover(self) -> dict[str, ModelInfo]:
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        return True

    async def infer(
        self, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float
    ) -> dict[str, np.ndarray]:
        self.calls.append(model)
        self.shapes.extend(a.shape for a in inputs.values())
        if model in self.refused:
            raise HubError("hub west-1 answered 500: onnxruntime failed: stoll")
        return {name: next(iter(inputs.values())) for name in outputs}


class RecordingRouter:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []
        self.clock = time.monotonic  # warm-up times its seeding call on the router's clock

    def report(self, backend: Backend, model: str, rows: int, latency_s: float, ok: bool) -> None:
        self.reports.append((backend.name, model))


async def test_a_model_whose_warm_up_fails_is_logged_and_the_others_are_warmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = model("int_math", {"A": ("INT32", (-1, 4))})
    bad = model("str_math", {"A": ("BYTES", (-1, 4))})
    backend = RefusingBackend([good, bad], refused={"str_math"})
    router = RecordingRouter()
    with caplog.at_level(logging.WARNING, "railgate.gateway"):
        await warm_up(backend, router, timeout_s=5.0)  # type: ignore[arg-type]
    assert router.reports == [("west-1", "int_math")]  # only the warmed model seeds an estimate
    assert "event=warmup_failed hub=west-1 model=str_math" in caplog.text
    assert backend.calls.count("int_math") == len(warmup_batches(good)) + 1


async def test_every_warm_up_call_takes_the_sample_s_dims_for_variable_ones() -> None:
    warmup = [
        {"name": "s", "batch_size": 1, "inputs": {"IN": {"data_type": "TYPE_STRING", "dims": [3], "zero_data": True}}}
    ]
    info = model("bytes_identity", {"IN": ("BYTES", (-1, -1))}, max_batch=4, warmup=warmup)
    backend = RefusingBackend([info], refused=set())
    await warm_up(backend, RecordingRouter(), timeout_s=5.0)  # type: ignore[arg-type]
    assert sorted(backend.shapes) == [(1, 3), (1, 3), (2, 3), (4, 3)]  # the sizes, then the seeding row
