"""Every failure is a clear ``{"error": ...}`` with the right status, before the request's deadline."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from devtools.devstack import StartError
from hub.server import Hub
from tests.conftest import GatewayProcess, LinkProcess, hub_entry, start_hub


def _digits_body(rows: int = 1, **extra) -> bytes:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [rows, 64], "data": [1] * (64 * rows)}
    return json.dumps({"inputs": [{**tensor, **extra}]}).encode()


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers or {}) as reply:
        raw = await reply.read()
        return reply.status, json.loads(raw)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("digits", b"{not json", {}, 400, "not valid JSON"),
        ("digits", _digits_body(datatype="FP8"), {}, 400, "unknown datatype 'FP8'"),
        ("digits", _digits_body(datatype="INT32"), {}, 400, "input 'pixels': datatype INT32, expected FP32"),
        ("digits", _digits_body(shape=[1, 63]), {}, 400, "input 'pixels'"),
        ("digits", json.dumps({"inputs": []}).encode(), {}, 400, "needs input(s) pixels"),
        ("digits", _digits_body(rows=300), {}, 400, "batch size 300 outside 1..256"),
        ("digits", _digits_body(), {"X-Latency-Budget-Ms": "soon"}, 400, "X-Latency-Budget-Ms"),
        ("digits", _digits_body(), {"Inference-Header-Content-Length": "x"}, 400, "Inference-Header-Content-Length"),
        ("nosuch", _digits_body(), {}, 404, "unknown model 'nosuch'"),
        ("digits/versions/7", _digits_body(), {}, 404, "no version '7'"),
        ("digits", _digits_body(), {"X-Latency-Budget-Ms": "0"}, 504, "budget"),
        ("digits", _digits_body(), {"X-Route-Policy": "fastest"}, 400, "valid: nearest, cheapest, balanced"),
        ("digits", _digits_body(), {"X-Allowed-Regions": "west,,east"}, 400, "X-Allowed-Regions"),
        (
            "digits",
            _digits_body(),
            {"X-Allowed-Regions": "east"},
            400,
            "unknown region(s) east; this gateway's regions are",
        ),
    ],
    ids=[
        "malformed",
        "unknown-datatype",
        "wrong-datatype",
        "wrong-shape",
        "missing-input",
        "batch-too-large",
        "bad-budget",
        "bad-header-length",
        "unknown-model",
        "unknown-version",
        "budget-spent",
        "unknown-policy",
        "malformed-regions",
        "unknown-region",
    ],
)
async def test_bad_requests_get_a_clear_error(
    gateway: GatewayProcess, path: str, body: bytes, headers: dict, status: int, message: str
):
    got, reply = await _post(f"{gateway.url}/v2/models/{path}/infer", body, headers)
    assert got == status
    assert set(reply) == {"error"} and message in reply["error"], reply


async def test_unknown_routes_answer_json_errors(gateway: GatewayProcess):
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/v2/nowhere") as reply:
        assert reply.status == 404
        assert "error" in await reply.json()
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/v2/models/nosuch") as reply:
        assert reply.status == 404
        assert "unknown model" in (await reply.json())["error"]


def _hub_inference_count(hub: Hub, model: str) -> int:
    url = f"{hub.http_url}/v2/models/{model}/stats"
    stats = json.loads(urllib.request.urlopen(url, timeout=5).read())
    return int(stats["model_stats"][0]["inference_count"])


async def test_expired_request_never_reaches_a_hub(gateway: GatewayProcess, hub: Hub):
    before = _hub_inference_count(hub, "anomaly")
    body = json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 128], "data": [0.0] * 128}]})
    for headers in ({"X-Latency-Budget-Ms": "0"}, {}):
        payload = body if headers else json.dumps({**json.loads(body), "parameters": {"timeout": 0}})
        status, reply = await _post(f"{gateway.url}/v2/models/anomaly/infer", payload.encode(), headers)
        assert status == 504 and "budget" in reply["error"]
    assert _hub_inference_count(hub, "anomaly") == before


def test_body_over_the_limit_is_refused_before_it_is_read(gateway: GatewayProcess):
    """Content-Length says 100 MB and only a few bytes follow: the 413 comes without waiting."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n{"
        )
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413")
    assert '"error"' in reply and "limit" in reply


async def test_deadline_is_kept_when_the_backbone_is_slower_than_the_budget(hub: Hub, tmp_path: Path):
    """A hub 300 ms away each way and a 100 ms budget: 504 long before the hub could answer."""
    with LinkProcess(hub.config.http_port, delay_ms=300) as link:
        config = {
            "hubs": [{"name": "far", "url": f"http://127.0.0.1:{link.port}"}],
            "local": {"enabled": False},
        }
        gw = GatewayProcess(tmp_path, config).start()
        try:
            t0 = time.monotonic()
            status, reply = await _post(
                f"{gw.url}/v2/models/digits/infer", _digits_body(), {"X-Latency-Budget-Ms": "100"}
            )
            elapsed = time.monotonic() - t0
        finally:
            gw.stop()
    assert status == 504, reply
    assert "far" in reply["error"] or "budget" in reply["error"]
    assert elapsed < 0.6, "the gateway waited for the hub past the request's deadline"


async def test_dead_hub_gives_502_until_ejected_then_503(repository: Path, tmp_path: Path):
    doomed = start_hub(repository, "doomed")
    try:
        config = {
            "hubs": [hub_entry(doomed)],
            "local": {"enabled": False},
            # Only failed calls mark the hub down here: probes are too slow to interfere.
            "health": {"probe_interval_s": 3600.0, "failures_to_eject": 2, "base_ejection_s": 60.0},
        }
        gw = GatewayProcess(tmp_path, config).start()
        try:
            status, _ = await _post(f"{gw.url}/v2/models/digits/infer", _digits_body())
            assert status == 200
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait()
            replies = [await _post(f"{gw.url}/v2/models/digits/infer", _digits_body()) for _ in range(3)]
            assert [r[0] for r in replies] == [502, 502, 503]
            assert all("hub doomed" in r[1]["error"] for r in replies[:2])
            assert "no healthy backend serves model 'digits'" in replies[2][1]["error"]
        finally:
            assert gw.stop() == 0
    finally:
        doomed.stop()


def test_serve_with_no_config_answers_from_local_onnxruntime(tmp_path: Path):
    gw = GatewayProcess(tmp_path, None).start()
    try:
        request = urllib.request.Request(
            f"{gw.url}/v2/models/digits/infer", data=_digits_body(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["X-Served-By"] == "local"
            assert json.loads(reply.read())["outputs"]
    finally:
        assert gw.stop() == 0


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path):
    gw = GatewayProcess(tmp_path, {"hubs": [{"name": "w", "url": "http://127.0.0.1:1", "price_per_1k": "lots"}]})
    with pytest.raises(StartError, match=r"hubs\[0\]\.price_per_1k"):
        gw.start()


def test_serve_refuses_a_port_in_use(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        gw = GatewayProcess(tmp_path, None, port=busy.getsockname()[1])
        with pytest.raises(StartError, match="cannot listen"):
            gw.start()
