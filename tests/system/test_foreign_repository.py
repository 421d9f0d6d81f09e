"""Any valid Triton model repository, not only railgate's own: a real hub over ``models.foreign``'s
hand-written repository, the gateway in front (warm-up on, local backend off), and unmodified
tritonclient programs that get the hub's own answers through the gateway.

Every program runs twice, against the hub's own port and against the gateway's, and the answers
must be the same: INT32 math with two inputs and two outputs, the same on decimal strings (BYTES
the model parses), a variable-length BYTES identity in two versions, and a model that does not
batch. The dev hub itself is also held to Triton's contract: failing batches never crash it.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from hub.server import Hub
from models.foreign import EVERY_TYPE, build_foreign_repository
from railcore.protocol.types import DTYPES, triton_datatype
from tests.conftest import GatewayProcess, hub_entry, start_hub

MODELS = ("bytes_identity", "every_type", "int_math", "nobatch_scale", "str_math")


@dataclass(frozen=True)
class Case:
    """One call: a model (and version), its inputs, the outputs it answers."""

    model: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    version: str = ""

    @property
    def id(self) -> str:
        return f"{self.model}-v{self.version}" if self.version else self.model


def _strings(rows: list[list[str]]) -> np.ndarray:
    return np.array([[s.encode() for s in row] for row in rows], dtype=object)


CASES = [
    Case(
        "int_math",
        {
            "A": np.arange(12, dtype=np.int32).reshape(3, 4) - 5,
            "B": np.array([[7, -2, 0, 2**30]] * 3, dtype=np.int32),
        },
        ("SUM", "DIFF"),
    ),
    Case(
        "str_math",
        {"A": _strings([["1", "-20", "300", "4"], ["0", "7", "8", "9"]]), "B": _strings([["10"] * 4, ["-3"] * 4])},
        ("SUM", "DIFF"),
    ),
    Case("bytes_identity", {"IN": _strings([["a", "bc", "d\u00e9f"], ["", "x" * 300, "z"]])}, ("OUT",), "1"),
    Case(
        "bytes_identity", {"IN": np.array([["\x00 nul, \U0001f600 and \u00fc".encode()]], dtype=object)}, ("OUT",), "2"
    ),
    Case("nobatch_scale", {"X": np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 7.0]], dtype=np.float32)}, ("Y",)),
]


def _every_type_inputs(rows: int = 3) -> dict[str, np.ndarray]:
    """Each datatype's extremes where it has them: the bytes must come back exactly."""
    inputs = {}
    for datatype in EVERY_TYPE:
        dtype = DTYPES[datatype]
        if datatype == "BYTES":
            inputs[datatype] = _strings([["", "\u00e9t\u00e9"]] * rows)
        elif datatype == "BOOL":
            inputs[datatype] = np.array([[True, False]] * rows)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            inputs[datatype] = np.array([[info.min, info.max]] * rows, dtype=dtype)
        else:
            inputs[datatype] = np.array([[np.finfo(dtype).min, -0.0]] * rows, dtype=dtype)
    return inputs


CASES.append(Case("every_type", _every_type_inputs(), tuple(f"{t}_OUT" for t in EVERY_TYPE)))
IDS = [c.id for c in CASES]


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype.kind == "O" else triton_datatype(array.dtype)


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


# -- the stack ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_foreign_repository(tmp_path_factory.mktemp("foreign") / "repository")


@pytest.fixture(scope="module")
def foreign_hub(foreign_repository: Path) -> Iterator[Hub]:
    """A real tritonserver over the foreign repository, HTTP and gRPC."""
    h = start_hub(foreign_repository, "foreign", grpc=True)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def front(foreign_hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway over the foreign hub, warm-up on (str_math's strings must parse), gRPC front on."""
    config = {
        "listen": {"grpc_port": 0},
        "hubs": [hub_entry(foreign_hub)],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5, "warmup": True},
    }
    g = GatewayProcess(tmp_path_factory.mktemp("foreign-gw"), config, log_level="INFO").start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def grpc_backed_front(foreign_hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The same, reaching the hub over gRPC (``protocol: grpc``): discovery reads gRPC's JSON config."""
    config = {"hubs": [hub_entry(foreign_hub, grpc=True)], "local": {"enabled": False}, "health": {"warmup": True}}
    g = GatewayProcess(tmp_path_factory.mktemp("foreign-gw-grpc"), config).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def hub_address(foreign_hub: Hub) -> dict[str, str]:
    return {"http": f"127.0.0.1:{foreign_hub.config.http_port}", "grpc": f"127.0.0.1:{foreign_hub.config.grpc_port}"}


@pytest.fixture(scope="module")
def gateway_address(front: GatewayProcess) -> dict[str, str]:
    return {"http": front.address, "grpc": front.grpc_address}


def test_the_hub_is_served_with_every_model_after_warm_up(front: GatewayProcess) -> None:
    """Warm-up sends valid data (str_math's strings parse), so the hub is up and every model served."""
    line = front.child.ready_match.group(0) if front.child.ready_match else ""
    assert "backends=foreign(up)" in line, line
    assert front.models == MODELS
    assert _discovery_and_warm_up_failures(front) == []
    assert any("event=hub_warmed hub=foreign models=5 warmed=5" in ln for ln in front.child.output)
    client = httpclient.InferenceServerClient(front.address)
    try:
        assert all(client.is_model_ready(m) for m in MODELS)
        assert client.get_model_metadata("bytes_identity")["versions"] == ["1", "2"]
    finally:
        client.close()


def _discovery_and_warm_up_failures(gateway: GatewayProcess) -> list[str]:
    return [ln for ln in gateway.child.output if "discover_failed" in ln or "warmup_failed" in ln]


# -- HTTP programs -----------------------------------------------------------------------------------


def _http_inputs(module, case: Case) -> tuple[list, list]:
    inputs = []
    for name, array in case.inputs.items():
        tensor = module.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs, [module.InferRequestedOutput(n, binary_data=True) for n in case.outputs]


def http_sync(address: str, case: Case, compression: str | None = None) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(address)
    try:
        inputs, outputs = _http_inputs(httpclient, case)
        result = client.infer(
            case.model,
            inputs,
            model_version=case.version,
            outputs=outputs,
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        return {n: result.as_numpy(n) for n in case.outputs}
    finally:
        client.close()


def http_async_infer(address: str, case: Case) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(address, concurrency=2)
    try:
        inputs, outputs = _http_inputs(httpclient, case)
        result = client.async_infer(case.model, inputs, model_version=case.version, outputs=outputs).get_result()
        return {n: result.as_numpy(n) for n in case.outputs}
    finally:
        client.close()


def http_aio(address: str, case: Case) -> dict[str, np.ndarray]:
    async def call() -> dict[str, np.ndarray]:
        async with aiohttpclient.InferenceServerClient(address) as client:
            inputs, outputs = _http_inputs(aiohttpclient, case)
            result = await client.infer(case.model, inputs, model_version=case.version, outputs=outputs)
            return {n: result.as_numpy(n) for n in case.outputs}

    return asyncio.run(call())


HTTP_PROGRAMS: dict[str, Callable[[str, Case], dict[str, np.ndarray]]] = {
    "infer": http_sync,
    "async_infer": http_async_infer,
    "aio": http_aio,
    "infer-gzip": lambda address, case: http_sync(address, case, "gzip"),
    "infer-deflate": lambda address, case: http_sync(address, case, "deflate"),
}


@pytest.mark.parametrize("program", list(HTTP_PROGRAMS))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_http_programs_get_the_hub_s_own_answers(
    hub_address: dict[str, str], gateway_address: dict[str, str], program: str, case: Case
) -> None:
    run = HTTP_PROGRAMS[program]
    _same(run(gateway_address["http"], case), run(hub_address["http"], case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_gateway_reaching_the_hub_over_grpc_gives_the_same_answers(
    hub_address: dict[str, str], grpc_backed_front: GatewayProcess, case: Case
) -> None:
    assert grpc_backed_front.models == MODELS
    assert _discovery_and_warm_up_failures(grpc_backed_front) == []
    _same(http_sync(grpc_backed_front.address, case), http_sync(hub_address["http"], case))


# -- gRPC programs -----------------------------------------------------------------------------------


def _grpc_inputs(module, case: Case) -> tuple[list, list]:
    inputs = []
    for name, array in case.inputs.items():
        tensor = module.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)  # raw_input_contents, as tritonclient always sends
        inputs.append(tensor)
    return inputs, [module.InferRequestedOutput(n) for n in case.outputs]


def grpc_sync(address: str, case: Case) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(address) as client:
        inputs, outputs = _grpc_inputs(grpcclient, case)
        result = client.infer(case.model, inputs, model_version=case.version, outputs=outputs)
        return {n: result.as_numpy(n) for n in case.outputs}


def grpc_async_infer(address: str, case: Case) -> dict[str, np.ndarray]:
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(address) as client:
        inputs, outputs = _grpc_inputs(grpcclient, case)
        client.async_infer(
            case.model,
            inputs,
            lambda result, error: answers.put((result, error)),
            model_version=case.version,
            outputs=outputs,
        )
        result, error = answers.get(timeout=30)
    assert error is None, error
    return {n: result.as_numpy(n) for n in case.outputs}


def grpc_aio(address: str, case: Case) -> dict[str, np.ndarray]:
    async def call() -> dict[str, np.ndarray]:
        async with aiogrpcclient.InferenceServerClient(address) as client:
            inputs, outputs = _grpc_inputs(aiogrpcclient, case)
            result = await client.infer(case.model, inputs, model_version=case.version, outputs=outputs)
            return {n: result.as_numpy(n) for n in case.outputs}

    return asyncio.run(call())


def grpc_stream(address: str, case: Case) -> dict[str, np.ndarray]:
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(address) as client:
        client.start_stream(lambda result, error: answers.put((result, error)))
        try:
            inputs, outputs = _grpc_inputs(grpcclient, case)
            client.async_stream_infer(
                case.model, inputs, model_version=case.version, outputs=outputs, request_id=f"{case.id}-1"
            )
            result, error = answers.get(timeout=30)
        finally:
            client.stop_stream()
    assert error is None, error
    assert result.get_response().id == f"{case.id}-1"
    return {n: result.as_numpy(n) for n in case.outputs}


GRPC_PROGRAMS: dict[str, Callable[[str, Case], dict[str, np.ndarray]]] = {
    "infer": grpc_sync,
    "async_infer": grpc_async_infer,
    "aio": grpc_aio,
    "stream": grpc_stream,
}


@pytest.mark.parametrize("program", list(GRPC_PROGRAMS))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grpc_programs_get_the_hub_s_own_answers(
    hub_address: dict[str, str], gateway_address: dict[str, str], program: str, case: Case
) -> None:
    run = GRPC_PROGRAMS[program]
    _same(run(gateway_address["grpc"], case), run(hub_address["grpc"], case))


# The typed ``contents`` field of each datatype (FP16 and BF16 have none: raw contents only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip
TYPED_CASES = [c for c in CASES if all(_datatype(a) in CONTENTS for a in c.inputs.values())]


def grpc_typed(address: str, case: Case) -> dict[str, np.ndarray]:
    """The stub itself, with inputs as typed ``contents`` instead of raw bytes."""
    request = service_pb2.ModelInferRequest(model_name=case.model, model_version=case.version)
    for name, array in case.inputs.items():
        tensor = request.inputs.add(name=name, datatype=_datatype(array), shape=list(array.shape))
        getattr(tensor.contents, CONTENTS[_datatype(array)]).extend(array.flatten().tolist())
    for name in case.outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    result = grpcclient.InferResult(reply)
    return {n: result.as_numpy(n) for n in case.outputs}


@pytest.mark.parametrize("case", TYPED_CASES, ids=[c.id for c in TYPED_CASES])
def test_typed_contents_through_the_stub_get_the_hub_s_own_answers(
    hub_address: dict[str, str], gateway_address: dict[str, str], case: Case
) -> None:
    _same(grpc_typed(gateway_address["grpc"], case), grpc_typed(hub_address["grpc"], case))


# -- variable dims under concurrency ---------------------------------------------------------------


def test_concurrent_requests_of_different_lengths_are_each_answered_with_their_own(
    gateway_address: dict[str, str],
) -> None:
    """Requests to a variable-dim model whose lengths differ are never concatenated into one batch."""
    cases = [
        Case("bytes_identity", {"IN": _strings([[f"{i}-{j}" for j in range(1 + i % 4)]] * (1 + i % 2))}, ("OUT",))
        for i in range(24)
    ]

    async def all_at_once() -> list[dict[str, np.ndarray]]:
        async with aiohttpclient.InferenceServerClient(gateway_address["http"]) as client:

            async def one(case: Case) -> dict[str, np.ndarray]:
                inputs, outputs = _http_inputs(aiohttpclient, case)
                result = await client.infer(case.model, inputs, outputs=outputs)
                return {"OUT": result.as_numpy("OUT")}

            return await asyncio.gather(*(one(c) for c in cases))

    for case, got in zip(cases, asyncio.run(all_at_once()), strict=True):
        _same(got, {"OUT": case.inputs["IN"]})


def test_strings_that_do_not_parse_never_take_the_hub_s_other_models_down(
    foreign_hub: Hub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = {"hubs": [hub_entry(foreign_hub)], "local": {"enabled": False}}
    bad = Case("str_math", {"A": _strings([["", "1", "2", "3"]]), "B": _strings([["1"] * 4])}, ("SUM", "DIFF"))
    with GatewayProcess(tmp_path_factory.mktemp("foreign-bad-input"), config) as gateway:
        for _ in range(6):
            with pytest.raises(InferenceServerException, match="onnxruntime failed"):
                http_sync(gateway.address, bad)
        assert http_sync(gateway.address, CASES[0])["SUM"].shape == (3, 4)


# -- the dev hub under failing batches ---------------------------------------------------------------


def test_concurrent_failing_batches_never_crash_the_hub(foreign_hub: Hub, hub_address: dict[str, str]) -> None:
    """Empty strings do not parse: every batch fails at once, each response with its own error."""
    bad = Case("str_math", {"A": _strings([["", "1", "2", "3"]]), "B": _strings([["1"] * 4])}, ("SUM", "DIFF"))

    def fail_once(_: int) -> str:
        # Closed after its call: tritonserver's shutdown waits (up to its 30 s exit timeout) for every
        # HTTP connection still open, and 31 left to the garbage collector held this module's teardown 20 s.
        client = httpclient.InferenceServerClient(hub_address["http"])
        try:
            inputs, outputs = _http_inputs(httpclient, bad)
            with pytest.raises(InferenceServerException) as raised:
                client.infer(bad.model, inputs, outputs=outputs)
            return str(raised.value)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        errors = list(pool.map(fail_once, range(96)))
    assert all("onnxruntime failed" in e for e in errors), {e[:120] for e in errors}
    assert foreign_hub.process is not None and foreign_hub.process.poll() is None, "tritonserver crashed"
    good = CASES[1]
    assert http_sync(hub_address["http"], good)["SUM"].tolist() == [
        [b"11", b"-10", b"310", b"14"],
        [b"-3", b"4", b"5", b"6"],
    ]
