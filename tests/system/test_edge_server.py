"""The firmware-facing server: KServe v2 over a Unix socket or loopback TCP, JSON / binary / msgpack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as httpclient
import yaml
from aiohttp import web

from devtools.devstack import next_line
from edge import EdgeRuntime, parse_edge_config
from edge.firmware import FirmwareSite
from edge.server import DECODE_LIMITS, create_app
from hub.server import free_port
from tests.conftest import GatewayProcess
from tests.samples import assert_same_outputs, local_outputs, sample_inputs

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def serving(config: dict, unix: Path | None = None) -> AsyncIterator[tuple[EdgeRuntime, str]]:
    """The edge app with its runtime, on a Unix socket (``unix``: the lean infer path with aiohttp behind it, as
    ``railgate edge`` serves it) or a free loopback port; yields the base URL."""
    runtime = EdgeRuntime(parse_edge_config(config))
    app = create_app(runtime)
    runner = web.AppRunner(app)
    await runner.setup()
    site = None
    try:
        if unix is not None:
            site = FirmwareSite(runner, runtime, app[DECODE_LIMITS], str(unix))
            await site.start()
            yield runtime, "http://edge"
        else:
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield runtime, f"http://127.0.0.1:{port}"
    finally:
        if site is not None:
            await site.stop()
        await runner.cleanup()


@pytest.fixture(scope="module")
def socket_dir():
    path = Path(tempfile.mkdtemp(prefix="rg-edge-"))  # short: a Unix socket path has ~100 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def unix_edge(repository: Path, socket_dir: Path):
    """The device's server on a Unix socket, offline, every model local."""
    path = socket_dir / "edge.sock"
    async with serving({"repository": str(repository)}, unix=path) as (runtime, _):
        yield runtime, path


@contextlib.asynccontextmanager
async def unix_client(path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
        yield session


def v2_json(inputs: dict[str, np.ndarray], **extra) -> bytes:
    tensors = [
        {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel().tolist()}
        for name, array in inputs.items()
    ]
    return json.dumps({"inputs": tensors, **extra}).encode()


async def test_v2_json_over_a_unix_socket_runs_on_the_device(unix_edge, repository: Path) -> None:
    _, path = unix_edge
    inputs = sample_inputs("digits", batch=2, seed=4)
    async with (
        unix_client(path) as http,
        http.post(
            "http://edge/v2/models/digits/infer",
            data=v2_json(inputs, id="fw-1"),
            headers={"Content-Type": "application/json", "X-Latency-Budget-Ms": "20"},
        ) as reply,
    ):
        assert reply.status == 200, await reply.text()
        body = await reply.json()
        headers = reply.headers
    assert headers["X-Served-By"] == "local" and headers["X-Edge-Path"] == "local"
    assert headers["X-Offload-Reason"] == "no_gateway" and float(headers["X-Edge-Latency-Ms"]) > 0
    assert body["id"] == "fw-1" and body["model_name"] == "digits"
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    want = local_outputs(repository, "digits", inputs)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6, atol=1e-6)


async def test_msgpack_over_a_unix_socket_gets_raw_tensors_back(unix_edge, repository: Path) -> None:
    _, path = unix_edge
    x = sample_inputs("anomaly", batch=3, seed=2)["window"]
    request = {
        "id": "m1",
        "inputs": [{"name": "window", "datatype": "FP32", "shape": [3, 128], "data": x.tobytes()}],
        "outputs": [{"name": "score"}],
    }
    async with (
        unix_client(path) as http,
        http.post(
            "http://edge/v2/models/anomaly/infer",
            data=msgpack.packb(request),
            headers={"Content-Type": "application/msgpack", "X-Offload-Policy": "local"},
        ) as reply,
    ):
        assert reply.status == 200 and reply.content_type == "application/msgpack"
        assert reply.headers["X-Offload-Reason"] == "policy_local"
        body = msgpack.unpackb(await reply.read())
    (score,) = body["outputs"]
    assert score["name"] == "score" and score["datatype"] == "FP32" and score["shape"] == [3, 1]
    got = np.frombuffer(score["data"], dtype="<f4").reshape(3, 1)
    np.testing.assert_allclose(got, local_outputs(repository, "anomaly", {"window": x})["score"], rtol=1e-6)


async def test_bytes_tensors_round_trip_through_msgpack(unix_edge) -> None:
    _, path = unix_edge
    words = [b"seven", b"nope"]
    data = b"".join(len(w).to_bytes(4, "little") + w for w in words)
    request = {"inputs": [{"name": "word", "datatype": "BYTES", "shape": [2, 1], "data": data}]}
    async with (
        unix_client(path) as http,
        http.post(
            "http://edge/v2/models/vocab/infer",
            data=msgpack.packb(request),
            headers={"Content-Type": "application/msgpack"},
        ) as reply,
    ):
        body = msgpack.unpackb(await reply.read())
    outputs = {o["name"]: o for o in body["outputs"]}
    assert np.frombuffer(outputs["word_id"]["data"], "<i8").tolist() == [7, -1]


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", {}, None, 503, "model 'nope' is not on this device, and no gateway"),
        ("/v2/models/digits/infer", {"X-Offload-Policy": "cloud"}, None, 400, "offload policy 'cloud'"),
        ("/v2/models/digits/infer", {"X-Latency-Budget-Ms": "soon"}, None, 400, "X-Latency-Budget-Ms must be"),
        ("/v2/models/digits/infer", {}, b'{"inputs": [{"name": "pixels"}]}', 400, "unknown datatype"),
        ("/v2/models/digits/infer", {}, v2_json({"pixels": np.zeros((1, 8), np.float32)}), 400, "shape [1, 8]"),
    ],
)
async def test_errors_are_json_with_the_right_status(unix_edge, path, headers, body, status, message) -> None:
    _, socket_path = unix_edge
    body = body if body is not None else v2_json(sample_inputs("digits", batch=1))
    async with unix_client(socket_path) as http, http.post(f"http://edge{path}", data=body, headers=headers) as reply:
        assert reply.status == status
        assert message in (await reply.json())["error"]


async def test_an_error_to_a_msgpack_client_is_msgpack(unix_edge) -> None:
    _, path = unix_edge
    async with (
        unix_client(path) as http,
        http.post(
            "http://edge/v2/models/digits/infer", data=b"\xc1", headers={"Content-Type": "application/msgpack"}
        ) as reply,
    ):
        assert reply.status == 400 and "not valid msgpack" in msgpack.unpackb(await reply.read())["error"]


async def test_each_route_keeps_its_method_with_infer_routes_first(unix_edge) -> None:
    """The infer routes are registered first (the hot call matches at once): the others still resolve, and a
    wrong method on either is a 405 error body, not another route's answer."""
    _, path = unix_edge
    body = v2_json(sample_inputs("digits", batch=1))
    async with unix_client(path) as http:
        async with http.post("http://edge/v2/models/digits/versions/1/infer", data=body) as reply:
            assert reply.status == 200 and reply.headers["X-Edge-Path"] == "local"
            assert (await reply.json())["model_version"] == "1"
        async with http.get("http://edge/v2/models/digits/infer") as reply:
            assert reply.status == 405 and "error" in await reply.json()
        async with http.post("http://edge/v2/models/digits", data=body) as reply:
            assert reply.status == 405 and "error" in await reply.json()
        async with http.get("http://edge/v2/models/digits") as reply:
            assert reply.status == 200 and (await reply.json())["name"] == "digits"


async def test_health_metadata_config_and_metrics(unix_edge) -> None:
    runtime, path = unix_edge
    async with unix_client(path) as http:
        for route in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
            async with http.get(f"http://edge{route}") as reply:
                assert reply.status == 200, route
        async with http.get("http://edge/v2/models/digits") as reply:
            assert await reply.json() == runtime.local_models()["digits"].info.metadata()
        async with http.get("http://edge/v2/models/digits/config") as reply:
            assert (await reply.json())["max_batch_size"] == 256
        async with http.get("http://edge/v2/models/digits/versions/7") as reply:
            assert reply.status == 404
        async with http.get("http://edge/v2") as reply:
            assert "offload" in (await reply.json())["extensions"]
        async with http.get("http://edge/metrics") as reply:
            text = await reply.text()
    assert 'railgate_edge_decisions_total{model="digits",reason="no_gateway",where="local"}' in text
    assert "railgate_edge_local_model{" in text


async def test_tritonclient_works_unchanged_against_the_edge_over_tcp(repository: Path) -> None:
    inputs = sample_inputs("digits", batch=3, seed=6)
    async with serving({"repository": str(repository), "models": ["digits"]}) as (_, url):

        def call():
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            tensor = httpclient.InferInput("pixels", [3, 64], "FP32")
            tensor.set_data_from_numpy(inputs["pixels"], binary_data=True)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")]
            result = client.infer("digits", [tensor], outputs=outputs)
            return {n: result.as_numpy(n) for n in ("label", "probabilities")}

        got = await asyncio.to_thread(call)
    assert_same_outputs(got, local_outputs(repository, "digits", inputs))


async def test_an_offloaded_call_carries_the_gateways_served_by(gateway: GatewayProcess, repository: Path) -> None:
    config = {
        "repository": str(repository),
        "models": ["digits"],
        "gateway_url": gateway.url,
        "sync": {"enabled": False},
    }
    inputs = sample_inputs("digits", batch=1, seed=3)
    async with serving(config) as (_, url), aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/v2/models/digits/infer",
            data=v2_json(inputs),
            headers={"X-Offload-Policy": "remote", "X-Latency-Budget-Ms": "5000"},
        ) as reply:
            assert reply.status == 200, await reply.text()
            assert reply.headers["X-Served-By"] == "west-1" and reply.headers["X-Edge-Path"] == "remote"
            assert reply.headers["X-Offload-Reason"] == "policy_remote"
        async with http.get(f"{url}/v2/models/vision") as reply:  # not on the device: the gateway's metadata
            assert (await reply.json())["inputs"][0]["name"] == "image"


def test_railgate_edge_serves_on_a_unix_socket_and_stops_cleanly(repository: Path, socket_dir: Path) -> None:
    config = socket_dir / "edge.yaml"
    config.write_text(yaml.safe_dump({"repository": str(repository), "models": ["digits"]}))
    path = socket_dir / "cli.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "edge.server", "--config", str(config), "--unix", str(path), "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = next_line(process, 60)
        assert banner.startswith(f"railgate edge serving unix:{path} local=digits("), banner

        async def call() -> int:
            async with unix_client(path) as http, http.get("http://edge/v2/health/ready") as reply:
                return reply.status

        assert asyncio.run(call()) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not path.exists()
