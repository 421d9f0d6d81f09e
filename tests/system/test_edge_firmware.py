"""The lean infer path on the edge's Unix socket (edge/firmware.py): the same replies and errors as aiohttp's
path, requests answered in order, anything else handed to aiohttp with its semantics intact. Real sockets,
a real runtime and real ONNX Runtime sessions; the clients are raw HTTP/1.1 over the socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from aiohttp import web

from edge import EdgeRuntime, parse_edge_config
from edge.firmware import FirmwareSite
from edge.server import DECODE_LIMITS, create_app
from hub.server import free_port
from tests.rawhttp import exchange, until
from tests.samples import sample_inputs


@contextlib.asynccontextmanager
async def both_paths(repository: Path) -> AsyncIterator[tuple[FirmwareSite, str, int]]:
    """One runtime behind the lean Unix socket and behind aiohttp on TCP (the reference)."""
    folder = Path(tempfile.mkdtemp(prefix="rg-fw-"))
    runtime = EdgeRuntime(parse_edge_config({"repository": str(repository), "models": ["digits"]}))
    app = create_app(runtime)
    runner = web.AppRunner(app)
    await runner.setup()
    site = FirmwareSite(runner, runtime, app[DECODE_LIMITS], str(folder / "fw.sock"))
    port = free_port()
    try:
        await site.start()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield site, str(folder / "fw.sock"), port
    finally:
        await site.stop()
        await runner.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def msgpack_body(seed: int = 0) -> bytes:
    x = sample_inputs("digits", batch=1, seed=seed)["pixels"]
    return msgpack.packb({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x.tobytes()}]})


def request(
    body: bytes, content_type: str = "application/msgpack", path: str = "/v2/models/digits/infer", extra: str = ""
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def same(a: tuple[int, dict[str, str], bytes], b: tuple[int, dict[str, str], bytes]) -> None:
    kept = ("content-type", "x-served-by", "x-offload-reason", "x-edge-path", "inference-header-content-length")
    assert a[0] == b[0]
    assert {k: a[1].get(k) for k in kept} == {k: b[1].get(k) for k in kept}
    assert a[2] == b[2]


async def test_infer_replies_are_aiohttps_byte_for_byte(repository: Path) -> None:
    async with both_paths(repository) as (site, path, port):
        x = sample_inputs("digits", batch=2, seed=3)["pixels"]
        json_body = json.dumps(
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": x.ravel().tolist()}]}
        ).encode()
        cases = [
            request(msgpack_body(1)),
            request(json_body, "application/json"),
            request(json_body, "application/json", "/v2/models/digits/versions/1/infer", "X-Latency-Budget-Ms: 50\r\n"),
        ]
        for data in cases:
            (lean,) = await exchange(path, data)
            (reference,) = await exchange(port, data)
            assert lean[0] == 200, lean
            same(lean, reference)
            assert lean[1]["server"] == reference[1]["server"] and "date" in lean[1]
        (one,) = await exchange(path, request(msgpack_body(1)))
        assert await until(lambda: not site.connections)  # each connection closed and forgotten
        assert msgpack.unpackb(one[2])["model_name"] == "digits"


async def test_pipelined_requests_are_answered_in_order(repository: Path) -> None:
    async with both_paths(repository) as (_, path, port):
        bodies = [msgpack_body(seed) for seed in range(5)]
        lean = await exchange(path, b"".join(request(b) for b in bodies), replies=5)
        for body, reply in zip(bodies, lean, strict=True):
            (reference,) = await exchange(port, request(body))
            same(reply, reference)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /v2/models/digits/infer HTTP/1.1\r\nHost: edge\r\n\r\n",  # 405 from aiohttp
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: edge\r\nContent-Type: application/msgpack\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + hex(len(msgpack_body())).encode()[2:]
        + b"\r\n"
        + msgpack_body()
        + b"\r\n0\r\n\r\n",
        request(msgpack_body(), extra="Transfer-Encoding: chunked\r\n"),  # with a Content-Length: aiohttp's call
        request(msgpack_body(), extra="Expect: 100-continue\r\n"),
        request(msgpack_body(), extra="Connection: keep-alive\r\n"),
        request(msgpack_body(), path="/v2/models/dig%69ts/infer"),
        request(msgpack_body()).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        request(msgpack_body(), extra="X-Folded: a\r\n b\r\n"),
        request(b"x", content_type="application/msgpack, text/plain"),
        request(msgpack_body(), extra="X-Odd: a\rb\r\n"),  # a lone CR in a value
        request(msgpack_body(), extra="X-Note: fine\r\nexpect: 100-continue\r\n"),  # any case, not first
    ],
)
async def test_other_requests_are_aiohttps_to_answer(repository: Path, data: bytes) -> None:
    async with both_paths(repository) as (site, path, port):
        lean_replies = await exchange(path, request(msgpack_body(2)) + data, replies=2)
        (reference,) = await exchange(port, data)
        assert lean_replies[0][0] == 200  # the first, a plain infer call, on the lean path
        same(lean_replies[1], reference)  # the second as aiohttp answers it, whatever it was
        assert await until(lambda: not site.connections)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (request(b"\xc1"), 400, "not valid msgpack"),
        (request(msgpack_body(), path="/v2/models/nope/infer"), 503, "model 'nope' is not on this device"),
        (request(msgpack_body(), extra="X-Latency-Budget-Ms: soon\r\n"), 400, "X-Latency-Budget-Ms must be"),
        # Spaces and tabs around a value are not part of it; a colon in a value is.
        (request(msgpack_body(), extra="X-Latency-Budget-Ms:\t  so:on \t\r\n"), 400, "got 'so:on'"),
        (request(msgpack_body(), extra="X-Offload-Policy: cloud\r\n"), 400, "offload policy 'cloud'"),
        (request(b'{"inputs": [{"name": "pixels"}]}', "application/json"), 400, "unknown datatype"),
    ],
)
async def test_errors_are_the_middlewares(repository: Path, data: bytes, status: int, message: str) -> None:
    async with both_paths(repository) as (_, path, port):
        (lean,) = await exchange(path, data)
        (reference,) = await exchange(port, data)
        same(lean, reference)
        assert lean[0] == status
        error = msgpack.unpackb(lean[2]) if "msgpack" in lean[1]["content-type"] else json.loads(lean[2])
        assert message in error["error"]


async def test_an_oversized_body_is_refused_as_before(repository: Path) -> None:
    async with both_paths(repository) as (_, path, port):
        limit = 64 * 1024 * 1024
        data = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: e\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
        (lean,) = await exchange(path, data)
        (reference,) = await exchange(port, data)
        same(lean, reference)
        assert lean[0] == 413


async def test_a_client_gone_mid_request_leaves_nothing_behind(repository: Path) -> None:
    async with both_paths(repository) as (site, path, _):
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(request(msgpack_body())[:-10])  # the body is not all there
        await writer.drain()
        assert await until(lambda: len(site.connections) == 1)
        writer.close()
        assert await until(lambda: not site.connections)
        (after,) = await exchange(path, request(msgpack_body()))
        assert after[0] == 200
