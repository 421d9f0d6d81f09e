"""The gateway's v2 gRPC front against a real hub: unmodified tritonclient, Triton's answers, batched with HTTP.

Every program here is written as a Triton user would write it, pointed at the gateway's gRPC port;
the hub's own gRPC port answers the same program for comparison. The gateways' local backends are
off, so every answer comes from the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import InferenceServerException

from devtools.devstack import StartError
from gateway.tenants import hash_key, new_key
from hub.server import Hub
from tests.conftest import GatewayProcess, LinkProcess, hub_entry
from tests.samples import MODELS, sample_inputs

OUTPUTS = {"digits": ("label", "probabilities"), "vision": ("label", "probabilities"),
           "anomaly": ("score", "anomaly"), "vocab": ("word_id", "echo")}  # fmt: skip
KEYS = {name: new_key() for name in ("acme", "limited")}
LIMIT_BYTES = 4 * 1024 * 1024
TRAILERS = ("x-served-by", "x-batch-size", "x-route-reason", "x-queue-ms", "x-backend-ms")


# -- gateways -------------------------------------------------------------------------------------


def _grpc_gateway(workdir: Path, hubs: list[dict], **config) -> GatewayProcess:
    body = {"listen": {"grpc_port": 0}, "hubs": hubs, "local": {"enabled": False}, **config}
    return GatewayProcess(workdir, body).start()


@pytest.fixture(scope="module")
def front(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway with its gRPC front on, in front of the session hub."""
    g = _grpc_gateway(
        tmp_path_factory.mktemp("grpc"),
        [hub_entry(hub)],
        health={"probe_interval_s": 0.5},
        limits={"max_body_bytes": LIMIT_BYTES},
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def grpc_hub_front(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    """gRPC end to end: the gateway's gRPC front, and gRPC from the gateway to the hub."""
    g = _grpc_gateway(tmp_path_factory.mktemp("grpc-grpc"), [hub_entry(hub, name="west-grpc", grpc=True)])
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tenant_front(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    g = _grpc_gateway(
        tmp_path_factory.mktemp("grpc-tenants"),
        [hub_entry(hub)],
        tenants=[
            {"name": "acme", "keys": [hash_key(KEYS["acme"])], "models": ["digits", "vocab"]},
            {"name": "limited", "keys": [hash_key(KEYS["limited"])], "rate_per_s": 0.01, "burst": 1},
        ],
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def slow_front(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    """The hub 250 ms away each way, one batch in flight per lane and no flush on delay: the requests
    that arrive while a batch is on the backbone wait in the queue and leave together when it returns."""
    with LinkProcess(hub.config.http_port, delay_ms=250) as link:
        g = _grpc_gateway(
            tmp_path_factory.mktemp("grpc-slow"),
            [{"name": "far", "url": link.url, "region": "west"}],
            batching={"max_inflight_batches": 1, "max_queue_delay_ms": 5000},
            admission={"refuse_predicted_misses": False},
        )
        yield g
        g.stop()


# -- helpers --------------------------------------------------------------------------------------


def _hub_grpc(hub: Hub) -> str:
    return f"127.0.0.1:{hub.config.grpc_port}"


def _inputs(arrays: dict[str, np.ndarray], module=grpcclient) -> list:
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "BYTES" if array.dtype.kind == "O" else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _outputs(result, model: str) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in OUTPUTS[model]}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def _infer(address: str, model: str, arrays: dict[str, np.ndarray], **kwargs):
    return grpcclient.InferenceServerClient(address).infer(model, _inputs(arrays), **kwargs)


def _hub_answer(hub: Hub, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return _outputs(_infer(_hub_grpc(hub), model, arrays), model)


def _stub(address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def _digits_message(
    rows: int = 1, request_id: str = "", dims: int = 64, outputs: tuple[str, ...] = ()
) -> service_pb2.ModelInferRequest:
    """A raw ``ModelInferRequest`` for digits, as tritonclient builds it."""
    pixels = sample_inputs("digits", batch=rows, seed=rows)["pixels"][:, :dims]
    message = service_pb2.ModelInferRequest(model_name="digits", id=request_id)
    message.inputs.add(name="pixels", datatype="FP32", shape=list(pixels.shape))
    message.raw_input_contents.append(pixels.tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def _message(model: str, arrays: dict[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    """A raw ``ModelInferRequest`` as tritonclient builds one."""
    return _get_inference_request(
        model_name=model, inputs=_inputs(arrays), model_version="", request_id="", outputs=None,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None,
    )  # fmt: skip


def _timeout_message(timeout_us: int) -> service_pb2.ModelInferRequest:
    """What tritonclient's ``infer(timeout=...)`` sends: the v2 ``timeout`` parameter, in microseconds."""
    message = _digits_message()
    message.parameters["timeout"].int64_param = timeout_us
    return message


def _error(program) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        program()
    return caught.value


def _rpc_error(program) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        program()
    return caught.value


def _metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def _hub_drained(gateway: GatewayProcess, hub: str = "west-1") -> Iterator[None]:
    """The hub out of rotation (the admin API, open on a gateway without keys) for the block."""
    drain = f"{gateway.url}/admin/hubs/{hub}/drain"
    urllib.request.urlopen(urllib.request.Request(drain, data=b"", method="POST"), timeout=5)
    try:
        yield
    finally:
        urllib.request.urlopen(urllib.request.Request(drain, method="DELETE"), timeout=5)


def _hub_inference_count(hub: Hub, model: str) -> int:
    stats = json.loads(urllib.request.urlopen(f"{hub.http_url}/v2/models/{model}/stats", timeout=5).read())
    return int(stats["model_stats"][0]["inference_count"])


# -- server and model RPCs ------------------------------------------------------------------------


def test_server_live_ready_and_metadata_answer_like_triton(front: GatewayProcess):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "railgate"
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(metadata["extensions"])


@pytest.mark.parametrize("model", MODELS)
def test_model_ready_metadata_and_config_equal_the_hubs(front: GatewayProcess, hub: Hub, model: str):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    direct = grpcclient.InferenceServerClient(_hub_grpc(hub))
    assert client.is_model_ready(model) and client.is_model_ready(model, "1")
    assert client.get_model_metadata(model, as_json=True) == direct.get_model_metadata(model, as_json=True)
    got = client.get_model_config(model, as_json=True)["config"]
    want = direct.get_model_config(model, as_json=True)["config"]
    assert got["name"] == want["name"] and got["max_batch_size"] == want["max_batch_size"]
    for side in ("input", "output"):
        assert [(t["name"], t["data_type"], t["dims"]) for t in got[side]] == [
            (t["name"], t["data_type"], t["dims"]) for t in want[side]
        ]


def test_model_ready_is_false_for_an_unknown_model_or_version(front: GatewayProcess):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    assert not client.is_model_ready("nosuch")
    assert not client.is_model_ready("digits", "7")


@pytest.mark.parametrize(
    ("rpc", "message"),
    [
        (lambda c: c.get_model_metadata("nosuch"), "unknown model 'nosuch'"),
        (lambda c: c.get_model_config("nosuch"), "unknown model 'nosuch'"),
        (lambda c: c.get_model_metadata("digits", "7"), "no version '7'"),
        (lambda c: c.get_inference_statistics("nosuch"), "unknown model 'nosuch'"),
    ],
    ids=["metadata", "config", "metadata-version", "statistics"],
)
def test_model_rpcs_answer_not_found_for_an_unknown_model(front: GatewayProcess, rpc, message: str):
    error = _error(lambda: rpc(grpcclient.InferenceServerClient(front.grpc_address)))
    assert error.status() == "StatusCode.NOT_FOUND" and message in error.message()


@pytest.mark.parametrize("ready", [False, True], ids=["all", "ready-only"])
def test_repository_index_lists_every_model_ready(front: GatewayProcess, ready: bool):
    index = _stub(front.grpc_address).RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=ready), timeout=10)
    assert {(m.name, m.version, m.state) for m in index.models} == {(m, "1", "READY") for m in MODELS}


def test_repository_index_asked_for_ready_models_leaves_out_the_unready(front: GatewayProcess):
    stub = _stub(front.grpc_address)
    with _hub_drained(front):
        ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
        every = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10)
    assert list(ready.models) == []
    assert {(m.name, m.state) for m in every.models} == {(m, "UNAVAILABLE") for m in MODELS}


def test_model_statistics_count_what_the_gateway_answered_in_tritons_schema(front: GatewayProcess, hub: Hub):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    before = client.get_inference_statistics("anomaly", as_json=True)["model_stats"][0]
    _infer(front.grpc_address, "anomaly", sample_inputs("anomaly", batch=3))
    after = client.get_inference_statistics("anomaly", as_json=True)["model_stats"][0]
    want = grpcclient.InferenceServerClient(_hub_grpc(hub)).get_inference_statistics("anomaly", as_json=True)
    assert set(after) <= set(want["model_stats"][0]) | {"inference_count", "execution_count", "last_inference"}
    assert after["name"] == "anomaly" and after["version"] == "1"
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 3
    assert int(after["inference_stats"]["success"]["count"]) > int(
        before.get("inference_stats", {}).get("success", {}).get("count", 0)
    )
    everyone = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everyone} == set(MODELS)


def _flat(value, path: str = "") -> dict[str, str]:
    """Statistics as path -> value, zeros left out (protobuf's JSON omits them and writes uint64 as text)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}[{i}]").items()}
    return {} if value in (0, "0", "", [], None) else {path: str(value)}


def test_model_statistics_over_grpc_equal_the_http_fronts(front: GatewayProcess):
    _infer(front.grpc_address, "vocab", sample_inputs("vocab", batch=2))
    over_grpc = grpcclient.InferenceServerClient(front.grpc_address).get_inference_statistics("vocab", as_json=True)
    over_http = httpclient.InferenceServerClient(front.address).get_inference_statistics("vocab")
    assert _flat(over_grpc) == _flat(over_http)


def test_shared_memory_status_and_unregister_say_no_region_is_registered(front: GatewayProcess):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    assert client.get_system_shared_memory_status(as_json=True) == {}
    assert client.get_cuda_shared_memory_status(as_json=True) == {}


@pytest.mark.parametrize(
    ("rpc", "why"),
    [
        (lambda c: c.register_system_shared_memory("r", "/r", 64), "no shared memory"),
        (lambda c: c.register_cuda_shared_memory("r", b"", 0, 64), "no shared memory"),
        (lambda c: c.load_model("digits"), "load and unload models on the hubs"),
        (lambda c: c.unload_model("digits"), "load and unload models on the hubs"),
        (lambda c: c.get_trace_settings(), "--log-level"),
        (lambda c: c.get_log_settings(), "--log-level"),
    ],
    ids=["register-system-shm", "register-cuda-shm", "load", "unload", "trace", "log"],
)
def test_rpcs_the_gateway_does_not_serve_are_unimplemented_saying_why(front: GatewayProcess, rpc, why: str):
    error = _error(lambda: rpc(grpcclient.InferenceServerClient(front.grpc_address)))
    assert error.status() == "StatusCode.UNIMPLEMENTED" and why in error.message(), error.message()


# -- inference programs ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_sync_infer_equals_the_hubs_answer(front: GatewayProcess, hub: Hub, model: str):
    arrays = sample_inputs(model, batch=5, seed=11)
    result = _infer(front.grpc_address, model, arrays, request_id="req-7")
    _assert_same(_outputs(result, model), _hub_answer(hub, model, arrays))
    assert result.get_response().id == "req-7"


def test_only_the_requested_outputs_come_back(front: GatewayProcess, hub: Hub):
    arrays = sample_inputs("digits", batch=2, seed=14)
    requested = [grpcclient.InferRequestedOutput("label")]
    through = _infer(front.grpc_address, "digits", arrays, outputs=requested)
    direct = _infer(_hub_grpc(hub), "digits", arrays, outputs=requested)
    assert [o.name for o in through.get_response().outputs] == ["label"]
    np.testing.assert_array_equal(through.as_numpy("label"), direct.as_numpy("label"))


def test_a_version_asked_for_is_the_version_answered(front: GatewayProcess):
    result = _infer(front.grpc_address, "digits", sample_inputs("digits", 1), model_version="1")
    assert (result.get_response().model_name, result.get_response().model_version) == ("digits", "1")


@pytest.mark.parametrize("model", MODELS)
def test_grpc_to_a_grpc_hub_equals_the_hubs_answer(grpc_hub_front: GatewayProcess, hub: Hub, model: str):
    arrays = sample_inputs(model, batch=3, seed=15)
    reply, call = _stub(grpc_hub_front.grpc_address).ModelInfer.with_call(_message(model, arrays), timeout=30)
    _assert_same(_outputs(grpcclient.InferResult(reply), model), _hub_answer(hub, model, arrays))
    assert dict(call.trailing_metadata())["x-served-by"] == "west-grpc"


@pytest.mark.parametrize("model", MODELS)
def test_async_infer_callback_equals_the_hubs_answer(front: GatewayProcess, hub: Hub, model: str):
    arrays = sample_inputs(model, batch=3, seed=12)
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(front.grpc_address)
    client.async_infer(model, _inputs(arrays), lambda result, error: answers.put((result, error)), request_id="cb")
    result, error = answers.get(timeout=30)
    assert error is None
    _assert_same(_outputs(result, model), _hub_answer(hub, model, arrays))
    assert result.get_response().id == "cb"


@pytest.mark.parametrize("model", MODELS)
async def test_aio_infer_equals_the_hubs_answer(front: GatewayProcess, hub: Hub, model: str):
    arrays = sample_inputs(model, batch=4, seed=13)
    client = aiogrpcclient.InferenceServerClient(front.grpc_address)
    try:
        result = await client.infer(model, _inputs(arrays, aiogrpcclient), request_id="aio")
    finally:
        await client.close()
    _assert_same(_outputs(result, model), _hub_answer(hub, model, arrays))
    assert result.get_response().id == "aio"


def _stream(address: str, requests: list[tuple[str, str, dict[str, np.ndarray]]]) -> list:
    """Each (id, model, arrays) on one tritonclient stream; the (result, error) callbacks, in arrival order."""
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        for request_id, model, arrays in requests:
            client.async_stream_infer(model, _inputs(arrays), request_id=request_id)
        return [answers.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()


def test_stream_answers_each_request_with_its_id_and_the_hubs_answer(front: GatewayProcess, hub: Hub):
    requests = [(f"s{i}-{model}", model, sample_inputs(model, batch=1 + i, seed=i)) for i, model in enumerate(MODELS)]
    requests += [(f"t{i}", "digits", sample_inputs("digits", batch=2, seed=50 + i)) for i in range(8)]
    answers = _stream(front.grpc_address, requests)
    assert all(error is None for _, error in answers), [e for _, e in answers if e]
    by_id = {result.get_response().id: result for result, _ in answers}
    assert set(by_id) == {request_id for request_id, _, _ in requests}
    for request_id, model, arrays in requests:
        _assert_same(_outputs(by_id[request_id], model), _hub_answer(hub, model, arrays))


async def test_aio_stream_answers_each_request_with_its_id_and_the_hubs_answer(front: GatewayProcess, hub: Hub):
    requests = [(f"a{i}-{model}", model, sample_inputs(model, batch=2, seed=60 + i)) for i, model in enumerate(MODELS)]

    async def messages():
        for request_id, model, arrays in requests:
            yield {"model_name": model, "inputs": _inputs(arrays, aiogrpcclient), "request_id": request_id}

    client = aiogrpcclient.InferenceServerClient(front.grpc_address)
    try:
        answers = [answer async for answer in client.stream_infer(messages(), stream_timeout=30)]
    finally:
        await client.close()
    assert all(error is None for _, error in answers), [e for _, e in answers if e]
    by_id = {result.get_response().id: result for result, _ in answers}
    for request_id, model, arrays in requests:
        _assert_same(_outputs(by_id[request_id], model), _hub_answer(hub, model, arrays))


def test_a_bad_message_on_a_stream_gets_its_own_error_and_the_stream_answers_the_next(front: GatewayProcess):
    good = sample_inputs("digits", batch=1)
    bad = {"pixels": good["pixels"][:, :63]}
    answers = _stream(front.grpc_address, [("a", "digits", good), ("b", "digits", bad), ("c", "digits", good)])
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "input 'pixels'" in errors[0].message()
    assert sorted(result.get_response().id for result, _ in answers if result is not None) == ["a", "c"]


def test_a_failed_stream_message_comes_back_with_its_id(front: GatewayProcess):
    messages = [_digits_message(request_id="ok-1"), _digits_message(request_id="bad", dims=63)]
    replies = list(_stub(front.grpc_address).ModelStreamInfer(iter(messages), timeout=30))
    by_id = {r.infer_response.id: r.error_message for r in replies}
    assert set(by_id) == {"ok-1", "bad"}
    assert by_id["ok-1"] == "" and "input 'pixels'" in by_id["bad"]


def test_a_stream_longer_than_its_window_is_answered_in_full(front: GatewayProcess):
    messages = [_digits_message(request_id=f"w{i}") for i in range(300)]  # the window is 256
    replies = list(_stub(front.grpc_address).ModelStreamInfer(iter(messages), timeout=60))
    assert sorted(r.infer_response.id for r in replies) == sorted(m.id for m in messages)
    assert all(r.error_message == "" for r in replies)


def test_a_stream_message_over_the_body_limit_ends_the_stream_resource_exhausted(front: GatewayProcess):
    messages = [_digits_message(request_id="ok-1"), _digits_message(LIMIT_BYTES // (64 * 4) + 16)]
    replies = []
    with pytest.raises(grpc.RpcError) as caught:
        for reply in _stub(front.grpc_address).ModelStreamInfer(iter(messages), timeout=30):
            replies.append(reply)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    assert str(LIMIT_BYTES) in caught.value.details()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_call_gets_the_hubs_answer(front: GatewayProcess, hub: Hub, algorithm: str):
    arrays = sample_inputs("vision", batch=2, seed=31)
    result = _infer(front.grpc_address, "vision", arrays, compression_algorithm=algorithm)
    _assert_same(_outputs(result, "vision"), _hub_answer(hub, "vision", arrays))


@pytest.mark.parametrize("model", ["digits", "vocab"])
def test_typed_contents_get_the_same_answer_as_raw(front: GatewayProcess, hub: Hub, model: str):
    arrays = sample_inputs(model, batch=3, seed=21)
    message = service_pb2.ModelInferRequest(model_name=model, id="typed")
    for name, array in arrays.items():
        tensor = message.inputs.add(name=name, shape=list(array.shape))
        if array.dtype.kind == "O":
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(array.ravel().tolist())
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    reply = _stub(front.grpc_address).ModelInfer(message, timeout=30)
    assert reply.id == "typed" and not reply.outputs[0].HasField("contents")
    got = _outputs(grpcclient.InferResult(reply), model)
    direct = _stub(_hub_grpc(hub)).ModelInfer(message, timeout=30)
    _assert_same(got, _outputs(grpcclient.InferResult(direct), model))
    _assert_same(got, _hub_answer(hub, model, arrays))


def test_replies_carry_the_routing_trailers(front: GatewayProcess):
    _, call = _stub(front.grpc_address).ModelInfer.with_call(_digits_message(2), timeout=30)
    trailers = dict(call.trailing_metadata())
    assert set(TRAILERS) <= set(trailers), trailers
    assert trailers["x-served-by"] == "west-1" and int(trailers["x-batch-size"]) >= 2
    assert float(trailers["x-queue-ms"]) >= 0 and float(trailers["x-backend-ms"]) > 0


@pytest.mark.parametrize("policy", ["cheapest", "balanced", "least_loaded"])
def test_route_policy_metadata_is_applied_and_explained(front: GatewayProcess, policy: str):
    metadata = (("x-route-policy", policy), ("x-allowed-regions", "west"), ("x-priority", "high"))
    _, call = _stub(front.grpc_address).ModelInfer.with_call(_digits_message(), metadata=metadata, timeout=30)
    trailers = dict(call.trailing_metadata())
    assert trailers["x-served-by"] == "west-1" and trailers["x-route-reason"].startswith(policy)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "metadata", "code", "text"),
    [
        (_digits_message(dims=63), {}, "INVALID_ARGUMENT", "input 'pixels'"),
        (_digits_message(300), {}, "INVALID_ARGUMENT", "batch size 300 outside 1..256"),
        (_digits_message(), {"x-latency-budget-ms": "soon"}, "INVALID_ARGUMENT", "X-Latency-Budget-Ms"),
        (_digits_message(), {"x-route-policy": "fastest"}, "INVALID_ARGUMENT", "valid: nearest, cheapest, balanced"),
        (_digits_message(), {"x-allowed-regions": "west,,east"}, "INVALID_ARGUMENT", "X-Allowed-Regions"),
        (_digits_message(), {"x-priority": "vip"}, "INVALID_ARGUMENT", "valid: high, normal, low"),
        (_digits_message(), {"x-latency-budget-ms": "0"}, "DEADLINE_EXCEEDED", "budget"),
        (_timeout_message(0), {}, "DEADLINE_EXCEEDED", "budget"),
        (service_pb2.ModelInferRequest(model_name="nosuch"), {}, "NOT_FOUND", "unknown model 'nosuch'"),
        (service_pb2.ModelInferRequest(model_name=""), {}, "NOT_FOUND", "unknown model ''"),
        (_digits_message(outputs=("nosuch",)), {}, "INVALID_ARGUMENT", "nosuch"),
        (service_pb2.ModelInferRequest(model_name="digits", model_version="7"), {}, "NOT_FOUND", "no version '7'"),
    ],
    ids=["wrong-shape", "batch-too-large", "bad-budget", "unknown-policy", "malformed-regions", "unknown-priority",
         "budget-spent", "timeout-parameter-spent", "unknown-model", "no-model", "unknown-output", "unknown-version"],
)  # fmt: skip
def test_a_bad_call_gets_the_status_code_and_the_http_message(
    front: GatewayProcess, message, metadata: dict, code: str, text: str
):
    error = _rpc_error(lambda: _stub(front.grpc_address).ModelInfer(message, metadata=tuple(metadata.items())))
    assert error.code() == getattr(grpc.StatusCode, code) and text in error.details(), error.details()


def test_a_model_with_no_backend_in_rotation_is_unavailable(front: GatewayProcess):
    with _hub_drained(front):
        error = _rpc_error(lambda: _stub(front.grpc_address).ModelInfer(_digits_message(), timeout=30))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "digits" in error.details(), error.details()


def test_a_model_with_no_backend_in_rotation_is_not_ready(front: GatewayProcess):
    client = grpcclient.InferenceServerClient(front.grpc_address)
    with _hub_drained(front):
        ready = client.is_model_ready("digits"), client.is_server_ready()
    assert ready == (False, False)


def test_tritonclient_sees_the_gateways_error_for_a_bad_shape(front: GatewayProcess):
    bad = {"pixels": sample_inputs("digits", batch=1)["pixels"][:, :63]}
    error = _error(lambda: _infer(front.grpc_address, "digits", bad))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "input 'pixels'" in error.message()


def test_a_message_over_the_body_limit_is_resource_exhausted_naming_its_size(front: GatewayProcess):
    rows = LIMIT_BYTES // (64 * 4) + 16
    message = _digits_message(rows)
    error = _rpc_error(lambda: _stub(front.grpc_address).ModelInfer(message, timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT_BYTES) in error.details() and str(message.ByteSize()) in error.details(), error.details()


def test_a_tiny_grpc_deadline_is_deadline_exceeded_without_reaching_the_hub(front: GatewayProcess, hub: Hub):
    """10 us is less than the gateway takes to start a handler: whether the client gives up before
    sending or the gateway finds the deadline past on arrival (a budget of 0), the hub never runs it."""
    before = _hub_inference_count(hub, "vision")
    arrays = sample_inputs("vision", batch=1)
    error = _error(
        lambda: _infer(
            front.grpc_address, "vision", arrays, client_timeout=1e-5, headers={"x-latency-budget-ms": "60000"}
        )
    )
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    _infer(front.grpc_address, "vision", arrays)  # one that does reach it, so the count is not read too early
    assert _hub_inference_count(hub, "vision") - before == 1


def test_a_budget_tighter_than_the_grpc_deadline_wins(slow_front: GatewayProcess):
    """The hub is a 500 ms round trip away; a 50 ms budget ends the call with the gateway's own 504
    long before the 20 s gRPC deadline."""
    t0 = time.monotonic()
    error = _error(
        lambda: _infer(
            slow_front.grpc_address, "digits", sample_inputs("digits", 1), client_timeout=20,
            headers={"x-latency-budget-ms": "50"},
        )
    )  # fmt: skip
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "budget" in error.message()
    assert time.monotonic() - t0 < 2.0


def test_a_grpc_deadline_tighter_than_the_budget_wins(slow_front: GatewayProcess):
    """A 60 s budget but a 150 ms gRPC deadline against the 500 ms round trip: the call ends at the
    deadline and the gateway stops working on it then (counted failed: its own 504, or 499 when the
    client's cancel arrives first), not after the budget."""

    def ended() -> float:
        return sum(_metric(slow_front, "railgate_requests_total", model="anomaly", status=s) for s in ("504", "499"))

    before = ended()
    t0 = time.monotonic()
    error = _error(
        lambda: _infer(
            slow_front.grpc_address, "anomaly", sample_inputs("anomaly", 1), client_timeout=0.15,
            headers={"x-latency-budget-ms": "60000"},
        )
    )  # fmt: skip
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - t0 < 2.0
    _wait_until(lambda: ended() - before == 1, "the gateway ended the call")


# -- tenants --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "model", "code", "text"),
    [
        (None, "digits", "UNAUTHENTICATED", "missing API key"),
        ("rg_wrong", "digits", "UNAUTHENTICATED", "invalid API key"),
        (KEYS["acme"], "vision", "PERMISSION_DENIED", "may not use model 'vision'"),
    ],
    ids=["no-key", "bad-key", "model-outside-the-tenant"],
)
def test_a_call_needs_a_valid_key_for_an_allowed_model(tenant_front, key: str | None, model: str, code: str, text: str):
    headers = {"authorization": f"Bearer {key}"} if key else None
    error = _error(lambda: _infer(tenant_front.grpc_address, model, sample_inputs(model, 1), headers=headers))
    assert error.status() == f"StatusCode.{code}" and text in error.message(), error.message()


def test_a_stream_without_a_key_answers_each_message_unauthenticated(tenant_front: GatewayProcess):
    messages = [_digits_message(request_id=f"m{i}") for i in range(2)]
    replies = list(_stub(tenant_front.grpc_address).ModelStreamInfer(iter(messages), timeout=30))
    assert sorted(r.infer_response.id for r in replies) == ["m0", "m1"]
    assert all("missing API key" in r.error_message for r in replies)


def test_a_stream_with_a_key_is_served(tenant_front: GatewayProcess, hub: Hub):
    arrays = sample_inputs("digits", batch=2)
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(tenant_front.grpc_address)
    client.start_stream(
        lambda result, error: answers.put((result, error)), headers={"authorization": f"Bearer {KEYS['acme']}"}
    )
    try:
        client.async_stream_infer("digits", _inputs(arrays), request_id="k")
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None and result.get_response().id == "k"
    _assert_same(_outputs(result, "digits"), _hub_answer(hub, "digits", arrays))


def test_a_tenant_key_is_served_its_models(tenant_front: GatewayProcess, hub: Hub):
    arrays = sample_inputs("vocab", batch=2)
    result = _infer(tenant_front.grpc_address, "vocab", arrays, headers={"authorization": f"Bearer {KEYS['acme']}"})
    _assert_same(_outputs(result, "vocab"), _hub_answer(hub, "vocab", arrays))


def _metadata_call(address: str, rpc: str, key: str | None, **fields):
    request = getattr(service_pb2, f"{rpc}Request")(**fields)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    return getattr(_stub(address), rpc)(request, metadata=metadata, timeout=30)


@pytest.mark.parametrize(
    ("rpc", "fields", "anonymous", "acme"),
    [
        ("ServerLive", {}, "OK", "OK"),  # health: open, as /v2/health/live
        ("ServerReady", {}, "OK", "OK"),
        ("ServerMetadata", {}, "UNAUTHENTICATED", "OK"),  # metadata: tenant, as GET /v2
        ("ModelMetadata", {"name": "digits"}, "UNAUTHENTICATED", "OK"),
        ("ModelMetadata", {"name": "vision"}, "UNAUTHENTICATED", "PERMISSION_DENIED"),  # not acme's
        ("ModelConfig", {"name": "vision"}, "UNAUTHENTICATED", "PERMISSION_DENIED"),
        ("ModelReady", {"name": "vision"}, "UNAUTHENTICATED", "PERMISSION_DENIED"),
        ("ModelStatistics", {"name": "vision"}, "UNAUTHENTICATED", "PERMISSION_DENIED"),
        ("ModelStatistics", {}, "UNAUTHENTICATED", "OK"),
        ("RepositoryIndex", {}, "UNAUTHENTICATED", "OK"),
    ],
)
def test_the_metadata_rpcs_take_the_http_routes_access_levels(tenant_front, rpc, fields, anonymous, acme):
    def outcome(key: str | None) -> str:
        try:
            _metadata_call(tenant_front.grpc_address, rpc, key, **fields)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    assert [outcome(None), outcome(KEYS["acme"])] == [anonymous, acme]


def test_a_tenant_key_is_shown_its_own_models_only(tenant_front: GatewayProcess):
    index = _metadata_call(tenant_front.grpc_address, "RepositoryIndex", KEYS["acme"])
    stats = _metadata_call(tenant_front.grpc_address, "ModelStatistics", KEYS["acme"])
    everything = _metadata_call(tenant_front.grpc_address, "RepositoryIndex", KEYS["limited"])  # no model list
    assert {m.name for m in index.models} == {m.name for m in stats.model_stats} == {"digits", "vocab"}
    assert {m.name for m in everything.models} == set(MODELS)


def test_a_tenant_over_its_rate_is_resource_exhausted(tenant_front: GatewayProcess):
    headers = {"authorization": f"Bearer {KEYS['limited']}"}
    with contextlib.suppress(InferenceServerException):  # the one call of burst, unless a test before spent it
        _infer(tenant_front.grpc_address, "digits", sample_inputs("digits", 1), headers=headers)
    error = _error(lambda: _infer(tenant_front.grpc_address, "digits", sample_inputs("digits", 1), headers=headers))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED" and "rate" in error.message()


def test_a_refusal_says_when_to_retry_in_its_trailers(tenant_front: GatewayProcess):
    metadata = (("authorization", f"Bearer {KEYS['limited']}"),)
    with contextlib.suppress(grpc.RpcError):  # the tenant's one call of burst, unless a test before spent it
        _stub(tenant_front.grpc_address).ModelInfer(_digits_message(), metadata=metadata)
    error = _rpc_error(lambda: _stub(tenant_front.grpc_address).ModelInfer(_digits_message(), metadata=metadata))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(error.trailing_metadata())["retry-after"]) >= 1


# -- batching with HTTP, cancellation -------------------------------------------------------------


def test_grpc_and_http_requests_share_batches(slow_front: GatewayProcess):
    """gRPC calls of one row and HTTP calls of ten, all at once: while the first batch is on the
    500 ms round trip the rest queue together, so a gRPC reply reporting more rows than all the gRPC
    calls had was batched with HTTP requests."""
    grpc_calls, http_calls = 6, 4

    def grpc_one(i: int) -> int:
        message = _digits_message(1, request_id=f"g{i}")
        reply, call = _stub(slow_front.grpc_address).ModelInfer.with_call(message, timeout=30)
        assert reply.id == f"g{i}"
        return int(dict(call.trailing_metadata())["x-batch-size"])

    def http_one(i: int) -> int:
        client = httpclient.InferenceServerClient(slow_front.address)
        result = client.infer("digits", _inputs(sample_inputs("digits", 10, seed=i), httpclient), request_id=f"h{i}")
        assert result.get_response()["id"] == f"h{i}"
        return 0

    batches_before = _metric(slow_front, "railgate_batch_size_count", model="digits")
    with ThreadPoolExecutor(grpc_calls + http_calls) as pool:
        futures = [pool.submit(grpc_one, i) for i in range(grpc_calls)]
        futures += [pool.submit(http_one, i) for i in range(http_calls)]
        sizes = [f.result(timeout=60) for f in futures[:grpc_calls]]
        for f in futures[grpc_calls:]:
            f.result(timeout=60)
    assert max(sizes) > grpc_calls, f"no gRPC call shared a batch with an HTTP one: sizes {sizes}"
    assert _metric(slow_front, "railgate_batch_size_count", model="digits") - batches_before < grpc_calls + http_calls


async def test_a_cancelled_call_is_dropped_before_its_batch_is_sent(slow_front: GatewayProcess, hub: Hub):
    """One vision batch holds the lane for the 500 ms round trip; a gRPC call queued behind it is
    cancelled; the call after it is answered, and the hub only ever saw the other two."""
    before = _hub_inference_count(hub, "vision")
    gone_before = _metric(slow_front, "railgate_requests_total", model="vision", status="499")
    client = aiogrpcclient.InferenceServerClient(slow_front.grpc_address)
    try:
        holder = asyncio.ensure_future(client.infer("vision", _inputs(sample_inputs("vision", 1), aiogrpcclient)))
        await asyncio.to_thread(
            _wait_until, lambda: _metric(slow_front, "railgate_backend_inflight_batches") >= 1, "a batch in flight"
        )
        doomed = asyncio.ensure_future(client.infer("vision", _inputs(sample_inputs("vision", 4), aiogrpcclient)))
        await asyncio.to_thread(
            _wait_until, lambda: _metric(slow_front, "railgate_queue_depth", model="vision") >= 1, "a call queued"
        )
        doomed.cancel()
        await holder
        after = await client.infer("vision", _inputs(sample_inputs("vision", 2), aiogrpcclient))
        assert after.as_numpy("label").shape == (2, 1)
    finally:
        await client.close()
    assert doomed.cancelled()
    assert _hub_inference_count(hub, "vision") - before == 1 + 2
    assert _metric(slow_front, "railgate_requests_total", model="vision", status="499") - gone_before == 1


async def test_a_cancelled_stream_drops_its_queued_messages_before_their_batch_is_sent(
    slow_front: GatewayProcess, hub: Hub
):
    """As above, with the queued call a message of a stream that the client then cancels."""

    def vision(rows: int) -> service_pb2.ModelInferRequest:
        image = sample_inputs("vision", batch=rows)["image"]
        message = service_pb2.ModelInferRequest(model_name="vision")
        message.inputs.add(name="image", datatype="FP32", shape=list(image.shape))
        message.raw_input_contents.append(image.tobytes())
        return message

    before = _hub_inference_count(hub, "vision")
    async with grpc.aio.insecure_channel(slow_front.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        holder = asyncio.ensure_future(stub.ModelInfer(vision(1), timeout=30))
        await asyncio.to_thread(
            _wait_until, lambda: _metric(slow_front, "railgate_backend_inflight_batches") >= 1, "a batch in flight"
        )
        stream = stub.ModelStreamInfer(timeout=30)
        await stream.write(vision(4))
        await asyncio.to_thread(
            _wait_until, lambda: _metric(slow_front, "railgate_queue_depth", model="vision") >= 1, "a message queued"
        )
        stream.cancel()
        await holder
        await stub.ModelInfer(vision(2), timeout=30)
    assert _hub_inference_count(hub, "vision") - before == 1 + 2


def test_workers_share_one_grpc_port_named_in_the_banner(hub: Hub, tmp_path: Path):
    gw = GatewayProcess(tmp_path, {"listen": {"grpc_port": 0}, "hubs": [hub_entry(hub)], "local": {"enabled": False}})
    gw.service.args += ["--workers", "2"]
    gw.start()
    try:
        arrays = sample_inputs("digits", batch=2)
        result = _infer(gw.grpc_address, "digits", arrays)
        _assert_same(_outputs(result, "digits"), _hub_answer(hub, "digits", arrays))
    finally:
        assert gw.stop() == 0


def test_serve_refuses_a_grpc_port_in_use_naming_it(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gw = GatewayProcess(tmp_path, {"listen": {"grpc_port": port}})
        with pytest.raises(StartError, match=f"cannot listen for gRPC on 127.0.0.1:{port}") as caught:
            gw.start()
    assert "Traceback" not in str(caught.value)


# -- grpc.health.v1 -------------------------------------------------------------------------------


def _health(address: str, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService"])
def test_health_check_is_serving_when_ready(front: GatewayProcess, service: str):
    assert _health(front.grpc_address, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(front: GatewayProcess):
    error = _rpc_error(lambda: _health(front.grpc_address, "nosuch.Service"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_call_in_flight_at_sigterm_is_answered_before_the_gateway_exits(hub: Hub, tmp_path: Path):
    with LinkProcess(hub.config.http_port, delay_ms=250) as link:
        gw = _grpc_gateway(tmp_path, [{"name": "far", "url": link.url}], drain_s=0.2, shutdown_grace_s=10.0)
        try:
            client = aiogrpcclient.InferenceServerClient(gw.grpc_address)
            arrays = sample_inputs("digits", batch=2)
            try:
                call = asyncio.ensure_future(client.infer("digits", _inputs(arrays, aiogrpcclient), request_id="late"))
                await asyncio.to_thread(
                    _wait_until, lambda: _metric(gw, "railgate_backend_inflight_batches") >= 1, "a batch in flight"
                )
                gw.child.process.send_signal(signal.SIGTERM)
                result = await call
            finally:
                await client.close()
            assert result.get_response().id == "late" and result.as_numpy("label").shape == (2, 1)
        finally:
            assert gw.stop() == 0


def test_health_check_is_not_serving_while_the_gateway_drains(hub: Hub, tmp_path: Path):
    gw = _grpc_gateway(tmp_path, [hub_entry(hub)], drain_s=3.0, shutdown_grace_s=3.0)
    try:
        assert _health(gw.grpc_address) == health_pb2.HealthCheckResponse.SERVING
        gw.child.process.send_signal(signal.SIGTERM)
        _wait_until(lambda: _health(gw.grpc_address) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING", 2.5)
        assert not grpcclient.InferenceServerClient(gw.grpc_address).is_server_ready()
    finally:
        assert gw.stop() == 0
