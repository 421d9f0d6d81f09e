"""The gateway's lean infer path on its HTTP port (gateway/fronts/lean.py over railcore/leanhttp.py): the same
replies and errors as aiohttp's path (a second gateway with ``listen.lean_http: false`` is the reference),
requests answered in order, split and slow requests served or handed to aiohttp with its semantics, and a
drain's replies closing their connections. Real gateway processes, real ONNX Runtime (the local backend),
real sockets; the clients write raw HTTP/1.1."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from gateway.tenants import hash_key, new_key
from tests.conftest import GatewayProcess
from tests.rawhttp import exchange, read_reply
from tests.samples import sample_inputs

KEY, OTHER = new_key(), new_key()
CONFIG = {
    "local": {"enabled": True, "models": ["digits", "vocab"]},
    "limits": {"max_json_body_bytes": 20_000, "body_timeout_s": 1.0},
    "tenants": [
        {"name": "acme", "keys": [hash_key(KEY)], "models": ["digits"]},
        {"name": "other", "keys": [hash_key(OTHER)], "models": ["vocab"]},
    ],
}


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    """(lean, reference): one config, the lean path on (the default) and off."""
    lean = GatewayProcess(tmp_path_factory.mktemp("lean"), CONFIG).start()
    try:
        reference = GatewayProcess(tmp_path_factory.mktemp("ref"), {**CONFIG, "listen": {"lean_http": False}}).start()
    except BaseException:
        lean.stop()
        raise
    yield lean, reference
    reference.stop()
    lean.stop()


def digits(batch: int = 1, seed: int = 0) -> list[float]:
    return sample_inputs("digits", batch=batch, seed=seed)["pixels"].ravel().tolist()


def json_body(batch: int = 1, seed: int = 0) -> bytes:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [batch, 64], "data": digits(batch, seed)}
    return json.dumps({"inputs": [tensor]}).encode()


def msgpack_body(seed: int = 0) -> bytes:
    x = sample_inputs("digits", batch=1, seed=seed)["pixels"]
    return msgpack.packb({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.tobytes()}]})


def binary_body(seed: int = 0) -> tuple[bytes, int]:
    """A v2 binary-extension body (JSON header, then the raw tensor) and its JSON header's length."""
    x = sample_inputs("digits", batch=1, seed=seed)["pixels"]
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": x.nbytes}}
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode()
    return header + x.tobytes(), len(header)


def request(
    body: bytes,
    content_type: str = "application/json",
    path: str = "/v2/models/digits/infer",
    key: str | None = KEY,
    extra: str = "",
) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: {content_type}\r\n{auth}{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def same(a: tuple[int, dict[str, str], bytes], b: tuple[int, dict[str, str], bytes]) -> None:
    kept = ("content-type", "x-served-by", "inference-header-content-length", "retry-after", "connection")
    assert a[0] == b[0], (a, b)
    assert {k: a[1].get(k) for k in kept} == {k: b[1].get(k) for k in kept}
    assert a[2] == b[2]
    assert ("x-gateway-ms" in a[1]) == ("x-gateway-ms" in b[1])


BINARY, HEADER_LENGTH = binary_body(2)
CASES = {
    "json": request(json_body(2, seed=1)),
    "msgpack": request(msgpack_body(3), "application/msgpack"),
    "binary": request(
        BINARY, "application/octet-stream", extra=f"Inference-Header-Content-Length: {HEADER_LENGTH}\r\n"
    ),
    "version": request(json_body(1), path="/v2/models/digits/versions/1/infer", extra="X-Latency-Budget-Ms: 500\r\n"),
    "keep-alive": request(json_body(1), extra="Connection: keep-alive\r\n"),
    "close": request(json_body(1), extra="connection: Close\r\n"),
    "upgrade": request(json_body(1), extra="Connection: Upgrade\r\n"),
    "header line over 8 KiB": request(json_body(1), extra="X-Long: " + "a" * 9000 + "\r\n"),
    "200 headers": request(json_body(1), extra="".join(f"X-H{i}: v\r\n" for i in range(200))),
    "100 headers": request(json_body(1), extra="".join(f"X-H{i}: v\r\n" for i in range(100))),
    "spaces around a value": request(json_body(1), extra="X-Latency-Budget-Ms: \t 500 \t\r\nX-Empty:\r\n"),
    "expect, lower case": request(json_body(1), extra="expect: 100-continue\r\n"),
    "transfer-encoding and a length": request(json_body(1), extra="transfer-encoding: chunked\r\n"),
    # errors, as the errors middleware answers them
    "no key": request(json_body(), key=None),
    "unknown key": request(json_body(), key="rg_" + "0" * 40),
    "model not the tenant's": request(json_body(), key=OTHER),
    "unknown model": request(json_body(), path="/v2/models/nope/infer"),
    "bad json": request(b"{not json"),
    "bad json, msgpack client": request(b"\xc1", "application/msgpack"),
    "wrong input": request(b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}'),
    "json over its own limit": request(json_body(16)),
    "header longer than the body": request(b"{}", extra="Inference-Header-Content-Length: 99\r\n"),
    "bad budget": request(json_body(), extra="X-Latency-Budget-Ms: soon\r\n"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_replies_are_aiohttps(gateways, name: str) -> None:
    lean, reference = gateways
    (mine,) = await exchange(lean.port, CASES[name])
    (theirs,) = await exchange(reference.port, CASES[name])
    same(mine, theirs)


async def test_failures_are_counted_as_aiohttps_path_counts_them(gateways) -> None:
    import urllib.request

    def failures(gw: GatewayProcess) -> list[str]:
        with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sorted(
            line for line in text.splitlines() if line.startswith("railgate_requests_total{") and "vocab" in line
        )

    for gw in gateways:
        await exchange(gw.port, request(json_body(), path="/v2/models/vocab/infer", key=OTHER))  # a 400: wrong input
    counted = failures(gateways[0])
    assert any('status="400"' in line and line.endswith(" 1.0") for line in counted), counted
    assert counted == failures(gateways[1])


async def test_pipelined_and_split_requests(gateways) -> None:
    lean, reference = gateways
    bodies = [json_body(1, seed) for seed in range(4)]
    mine = await exchange(lean.port, b"".join(request(b) for b in bodies), replies=4)
    for body, reply in zip(bodies, mine, strict=True):
        (theirs,) = await exchange(reference.port, request(body))
        same(reply, theirs)
    # a head and its body in separate writes, the body itself in pieces: answered on the lean path
    data = request(json_body(1, seed=9))
    reader, writer = await asyncio.open_connection("127.0.0.1", lean.port)
    try:
        for piece in (data[:30], data[30:200], data[200:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)  # the pieces arrive apart, as a slow client's would (not synchronisation)
        split = await read_reply(reader)
        again = (writer.write(data), await read_reply(reader))[1]  # the connection goes on
    finally:
        writer.close()
    (theirs,) = await exchange(reference.port, data)
    same(split, theirs)
    same(again, theirs)


async def test_large_split_body_and_other_requests_go_to_aiohttp(gateways) -> None:
    """A body past the split limit that arrives after its head is read by aiohttp's path (413 here: over the
    JSON limit, counted as it arrives); a GET on the infer route is aiohttp's 405; the connection goes on."""
    lean, reference = gateways
    big = json.dumps({"inputs": [], "pad": "x" * 70_000}).encode()
    for gw in (lean, reference):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            head, body = request(big).split(b"\r\n\r\n", 1)
            writer.write(head + b"\r\n\r\n" + body[:100])
            await writer.drain()
            status, _, reply = await read_reply(reader)
            assert status == 413 and b"limits.max_json_body_bytes" in reply
        finally:
            writer.close()
    get = b"GET /v2/models/digits/infer HTTP/1.1\r\nHost: gw\r\n\r\n"
    mine = await exchange(lean.port, get + request(json_body()), replies=2)
    theirs = await exchange(reference.port, get + request(json_body()), replies=2)
    assert [r[0] for r in mine] == [405, 200]
    for a, b in zip(mine, theirs, strict=True):
        same(a, b)


async def test_a_request_that_never_completes_gets_aiohttps_timeout(gateways) -> None:
    """Half a body, then nothing: the lean path waits limits.body_timeout_s, then aiohttp's path reads on and
    answers 408 as it does (its own timeout counted again from the hand-off)."""
    for gw in gateways:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            data = request(json_body())
            writer.write(data[: len(data) - 10])
            status, _, reply = await read_reply(reader)
            assert status == 408 and b"did not arrive within 1 s" in reply, (status, reply)
        finally:
            writer.close()


async def test_a_client_gone_mid_request_leaves_the_gateway_serving(gateways) -> None:
    lean, _ = gateways
    for cut in (10, 80, 300):
        _, writer = await asyncio.open_connection("127.0.0.1", lean.port)
        writer.write(request(json_body(1))[:cut])
        await writer.drain()
        writer.close()
    (reply,) = await exchange(lean.port, request(json_body(1)))
    assert reply[0] == 200


async def test_draining_replies_close_their_connections(tmp_path) -> None:
    import signal

    from tests.system.test_drain import ready_status

    gw = GatewayProcess(tmp_path, {"local": {"enabled": True, "models": ["digits"]}, "drain_s": 10.0}).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request(json_body(), key=None))
        status, headers, _ = await read_reply(reader)
        assert status == 200 and "connection" not in headers
        gw.service.process.send_signal(signal.SIGTERM)
        for _ in range(100):  # bounded: readiness fails at once on the signal
            if await asyncio.to_thread(ready_status, gw.url) == 503:
                break
        writer.write(request(json_body(), key=None))  # the drain window: still answered, and its last
        status, headers, _ = await read_reply(reader)
        assert status == 200 and headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the gateway closed it
        writer.close()
    finally:
        gw.stop()
