"""The gateway's KServe v2 API against a real hub: tritonclient unchanged, three encodings, batching."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import msgpack
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from hub.server import Hub
from tests.conftest import GatewayProcess, hub_entry
from tests.samples import sample_inputs

MODELS = ["digits", "vision", "anomaly", "vocab"]


def _infer_sync(address: str, model: str, inputs: dict[str, np.ndarray], binary: bool):
    client = httpclient.InferenceServerClient(address)
    tensors = []
    for name, array in inputs.items():
        t = httpclient.InferInput(name, list(array.shape), "BYTES" if array.dtype.kind == "O" else "FP32")
        t.set_data_from_numpy(array, binary_data=binary)
        tensors.append(t)
    outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in _output_names(model)]
    return client.infer(model, tensors, outputs=outputs, request_id="req-7")


def _output_names(model: str) -> list[str]:
    return {"anomaly": ["score", "anomaly"], "vocab": ["word_id", "echo"]}.get(model, ["label", "probabilities"])


def _assert_equal_results(got, want, model: str) -> None:
    for name in _output_names(model):
        a, b = got.as_numpy(name), want.as_numpy(name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_tritonclient_http_through_gateway_equals_hub(gateway: GatewayProcess, hub: Hub, model: str, binary: bool):
    inputs = sample_inputs(model, batch=5, seed=11)
    through = _infer_sync(gateway.address, model, inputs, binary)
    direct = _infer_sync(f"127.0.0.1:{hub.config.http_port}", model, inputs, binary)
    _assert_equal_results(through, direct, model)
    assert through.get_response()["id"] == "req-7"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_http_aio_through_gateway_equals_hub(gateway: GatewayProcess, hub: Hub, binary: bool):
    inputs = sample_inputs("digits", batch=3, seed=5)
    results = []
    for address in (gateway.address, f"127.0.0.1:{hub.config.http_port}"):
        client = aiohttpclient.InferenceServerClient(address)
        try:
            t = aiohttpclient.InferInput("pixels", list(inputs["pixels"].shape), "FP32")
            t.set_data_from_numpy(inputs["pixels"], binary_data=binary)
            out = [aiohttpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
            results.append(await client.infer("digits", [t], outputs=out))
        finally:
            await client.close()
    _assert_equal_results(results[0], results[1], "digits")


def test_tritonclient_without_requested_outputs_gets_all_of_them_in_binary(gateway: GatewayProcess):
    client = httpclient.InferenceServerClient(gateway.address)
    x = sample_inputs("digits", batch=1)["pixels"]
    t = httpclient.InferInput("pixels", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    result = client.infer("digits", [t])
    assert result.as_numpy("label").shape == (1, 1)
    assert result.as_numpy("probabilities").shape == (1, 10)


def test_server_and_model_endpoints_follow_triton(gateway: GatewayProcess, hub: Hub):
    client = httpclient.InferenceServerClient(gateway.address)
    direct = httpclient.InferenceServerClient(f"127.0.0.1:{hub.config.http_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for model in MODELS:
        assert client.is_model_ready(model)
        assert client.get_model_metadata(model) == direct.get_model_metadata(model)
        assert client.get_model_config(model)["max_batch_size"] == direct.get_model_config(model)["max_batch_size"]
    assert client.get_model_metadata("digits", model_version="1")["versions"] == ["1"]
    assert {m["name"] for m in client.get_model_repository_index()} == set(MODELS)


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as reply:
        return reply.status, dict(reply.headers), await reply.read()


async def test_v2_json_request_gets_a_json_reply_with_routing_headers(gateway: GatewayProcess):
    x = sample_inputs("digits", batch=1, seed=2)["pixels"]
    body = json.dumps(
        {"id": "abc", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]}
    ).encode()
    status, headers, raw = await _post(
        f"{gateway.url}/v2/models/digits/infer", body, {"Content-Type": "application/json"}
    )
    assert status == 200, raw
    reply = json.loads(raw)
    assert reply["id"] == "abc" and reply["model_name"] == "digits"
    assert {o["name"] for o in reply["outputs"]} == {"label", "probabilities"}
    assert headers["X-Served-By"] == "west-1"
    assert int(headers["X-Batch-Size"]) >= 1 and headers["X-Route-Reason"]


async def test_msgpack_request_gets_a_msgpack_reply_with_raw_tensors(gateway: GatewayProcess, hub: Hub):
    x = sample_inputs("anomaly", batch=2, seed=9)["window"]
    body = msgpack.packb(
        {"id": "m1", "inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 128], "data": x.tobytes()}]}
    )
    status, headers, raw = await _post(
        f"{gateway.url}/v2/models/anomaly/infer", body, {"Content-Type": "application/msgpack"}
    )
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/msgpack")
    reply = msgpack.unpackb(raw)
    assert reply["id"] == "m1"
    outputs = {o["name"]: o for o in reply["outputs"]}
    score = np.frombuffer(outputs["score"]["data"], dtype="<f4").reshape(outputs["score"]["shape"])
    flagged = np.frombuffer(outputs["anomaly"]["data"], dtype=np.bool_).reshape(outputs["anomaly"]["shape"])
    direct = _infer_sync(f"127.0.0.1:{hub.config.http_port}", "anomaly", {"window": x}, binary=True)
    np.testing.assert_array_equal(score, direct.as_numpy("score"))
    np.testing.assert_array_equal(flagged, direct.as_numpy("anomaly"))


def test_concurrent_requests_are_batched_and_split_back_exactly(gateway: GatewayProcess, hub: Hub):
    """64 clients at once, each with its own input: batches form, and every reply is its own."""
    direct = httpclient.InferenceServerClient(f"127.0.0.1:{hub.config.http_port}")
    inputs = [sample_inputs("digits", batch=1 + i % 3, seed=100 + i)["pixels"] for i in range(64)]

    def one(i: int):
        client = httpclient.InferenceServerClient(gateway.address)
        t = httpclient.InferInput("pixels", list(inputs[i].shape), "FP32")
        t.set_data_from_numpy(inputs[i])
        result = client.infer("digits", [t], request_id=f"r{i}", headers={"X-Latency-Budget-Ms": "20000"})
        return result

    _, batches_before = _batch_size_sum_count(gateway)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(64)))
    _, batches_after = _batch_size_sum_count(gateway)
    for i, result in enumerate(results):
        assert result.get_response()["id"] == f"r{i}"
        t = httpclient.InferInput("pixels", list(inputs[i].shape), "FP32")
        t.set_data_from_numpy(inputs[i])
        want = direct.infer("digits", [t])
        np.testing.assert_array_equal(result.as_numpy("label"), want.as_numpy("label"))
        np.testing.assert_array_equal(result.as_numpy("probabilities"), want.as_numpy("probabilities"))
    assert batches_after - batches_before < 64, "64 concurrent requests were sent as 64 separate batches"


def _batch_size_sum_count(gateway: GatewayProcess) -> tuple[float, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == "digits" and sample.name == "railgate_batch_size_sum":
                total += sample.value
            if sample.labels.get("model") == "digits" and sample.name == "railgate_batch_size_count":
                count += sample.value
    return total, count


def test_metrics_are_prometheus_text_with_railgate_prefix(gateway: GatewayProcess):
    import urllib.request

    text = urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5).read().decode()
    for name in (
        "railgate_requests_total",
        "railgate_request_latency_seconds_bucket",
        "railgate_queue_wait_seconds_bucket",
        "railgate_backend_latency_seconds_bucket",
        "railgate_batch_size_bucket",
        "railgate_queue_depth",
        "railgate_backend_inflight_batches",
    ):
        assert name in text, name


async def test_many_concurrent_aio_requests_all_answered(gateway: GatewayProcess):
    x = sample_inputs("digits", batch=1)["pixels"]
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]}
    ).encode()
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(f"{gateway.url}/v2/models/digits/infer", data=body) as reply:
                await reply.read()
                return reply.status

        statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses == [200] * 200


def test_grpc_hub_serves_through_the_gateway_like_http(hub: Hub, tmp_path):
    config = {"hubs": [hub_entry(hub, name="west-grpc", grpc=True)], "local": {"enabled": False}}
    gw = GatewayProcess(tmp_path, config).start()
    try:
        inputs = sample_inputs("vision", batch=2, seed=4)
        through = _infer_sync(gw.address, "vision", inputs, binary=True)
        direct = _infer_sync(f"127.0.0.1:{hub.config.http_port}", "vision", inputs, binary=True)
        _assert_equal_results(through, direct, "vision")
    finally:
        assert gw.stop() == 0


async def test_a_bad_request_never_fails_the_good_ones_beside_it(gateway: GatewayProcess):
    good = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    bad = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 63], "data": [1.0] * 63}]})
    async with aiohttp.ClientSession() as session:

        async def one(body: str) -> int:
            async with session.post(f"{gateway.url}/v2/models/digits/infer", data=body) as reply:
                await reply.read()
                return reply.status

        statuses = await asyncio.gather(*(one(good if i % 2 else bad) for i in range(40)))
    assert statuses == [400 if i % 2 == 0 else 200 for i in range(40)]


def test_bytes_requests_batched_together_keep_their_own_strings(gateway: GatewayProcess):
    """Variable-length BYTES rows from many clients share batches and come back each to its owner."""
    words = [f"w{i}-{'x' * i}".encode() for i in range(48)] + [b"seven", b"two"]

    def one(i: int):
        client = httpclient.InferenceServerClient(gateway.address)
        array = np.array([[words[i]]], dtype=object)
        t = httpclient.InferInput("word", [1, 1], "BYTES")
        t.set_data_from_numpy(array, binary_data=i % 2 == 0)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=i % 3 == 0) for n in ("word_id", "echo")]
        return client.infer("vocab", [t], outputs=outputs, request_id=f"b{i}")

    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(one, range(len(words))))
    for i, result in enumerate(results):
        assert result.get_response()["id"] == f"b{i}"
        echo = result.as_numpy("echo")[0, 0]
        assert (echo if isinstance(echo, bytes) else echo.encode()) == words[i]
        expected_id = {b"seven": 7, b"two": 2}.get(words[i], -1)
        assert result.as_numpy("word_id")[0, 0] == expected_id


@pytest.mark.parametrize("policy", ["cheapest", "greenest", "round_robin", "least_loaded", "balanced"])
async def test_route_policy_header_is_applied_and_explained(gateway: GatewayProcess, policy: str):
    x = sample_inputs("digits", batch=1)["pixels"]
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]}
    ).encode()
    headers = {"X-Route-Policy": policy, "X-Allowed-Regions": "west"}
    status, reply_headers, raw = await _post(f"{gateway.url}/v2/models/digits/infer", body, headers)
    assert status == 200, raw
    assert reply_headers["X-Served-By"] == "west-1"
    assert reply_headers["X-Route-Reason"].startswith(policy)
