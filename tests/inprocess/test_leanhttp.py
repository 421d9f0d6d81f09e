"""railcore/leanhttp.py's connection timers, on a real loopback socket: the keep-alive timeout closes an idle
connection (as aiohttp's does), not one that is answering; a request that never completes goes to aiohttp.
And a connection's repeated head, which is taken as parsed: each request is still answered by its own head."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDictProxy

from railcore.leanhttp import LeanProtocol, LeanSite, Reply
from tests.rawhttp import read_reply

REQUEST = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Echo(LeanProtocol):
    delay_s = 0.0

    async def respond(
        self, model: str, version: str, headers: CIMultiDictProxy[str], content_type: str, body: bytes
    ) -> Reply:
        await asyncio.sleep(self.delay_s)  # a slow call, when a test asks for one
        try:
            headers["X-Tag"] = "changed"  # type: ignore[index]
            writable = "yes"  # a repeated head's headers serve its next request: none may change them
        except TypeError:
            writable = "no"
        reply = {"Content-Type": "application/json", "X-Model": model, "X-Writable": writable}
        return 200, [body], reply | {"X-Tag": headers.get("X-Tag", "")}


@contextlib.asynccontextmanager
async def served(keepalive_s: float, wait_s: float = 5.0, delay_s: float = 0.0) -> AsyncIterator[tuple[LeanSite, int]]:
    """A LeanSite of ``Echo`` on a free loopback port in front of an aiohttp app (what is handed off), and its port."""

    async def by_aiohttp(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="aiohttp")

    app = web.Application()
    app.router.add_post("/v2/models/{m}/infer", by_aiohttp)
    runner = web.AppRunner(app)
    await runner.setup()

    def protocol(fallback, connections):
        p = Echo(fallback, connections, 1 << 20, split_body_bytes=1 << 16, wait_s=wait_s, keepalive_s=keepalive_s)
        p.delay_s = delay_s
        return p

    site = LeanSite(runner, protocol)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        await site.start_socket(sock, None, 16)
        yield site, sock.getsockname()[1]
    finally:
        await site.close(1)
        await runner.cleanup()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with served(keepalive_s=0.3) as (site, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        status, _, body = await read_reply(reader)
        assert (status, body) == (200, b"{}")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the gateway closed it
        assert time.monotonic() - started >= 0.25  # not before the timeout
        writer.close()
        assert not site.connections


async def test_a_call_longer_than_the_keepalive_timeout_is_answered() -> None:
    async with served(keepalive_s=0.2, delay_s=0.6) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        status, _, body = await read_reply(reader)
        assert (status, body) == (200, b"{}")
        writer.close()


async def test_a_request_not_whole_in_time_goes_to_aiohttp() -> None:
    async with served(keepalive_s=10, wait_s=0.2) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST[:-1])
        await writer.drain()
        await asyncio.sleep(0.4)  # past wait_s: the connection is aiohttp's now (a slow client, not synchronisation)
        writer.write(REQUEST[-1:])
        status, _, body = await read_reply(reader)
        assert (status, body) == (200, b"aiohttp")
        writer.close()


def _request(model: str = "m", tag: str = "a", body: bytes = b"{}", extra: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if not extra else ""
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nX-Tag: {tag}\r\n{length}"
    return head.encode() + extra + b"\r\n" + body


async def test_each_request_is_answered_by_its_own_head_when_heads_repeat_on_a_connection() -> None:
    requests = [
        _request(),
        _request(),  # the same head again
        _request(tag="b"),  # one header differs
        _request(),
        _request(model="n"),  # the target differs
        _request(body=b'{"x": 1}'),  # the body's length differs
    ]
    async with served(keepalive_s=10) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for request in requests:
            writer.write(request)
            status, headers, body = await read_reply(reader)
            replies.append((status, headers["x-model"], headers["x-tag"], headers["x-writable"], body))
        # A head the lean path does not serve, after one it does: aiohttp takes the connection.
        writer.write(_request(body=b"", extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n")
        status, headers, body = await read_reply(reader)
        writer.close()
    assert replies == [
        (200, "m", "a", "no", b"{}"),
        (200, "m", "a", "no", b"{}"),
        (200, "m", "b", "no", b"{}"),
        (200, "m", "a", "no", b"{}"),
        (200, "n", "a", "no", b"{}"),
        (200, "m", "a", "no", b'{"x": 1}'),
    ]
    assert (status, body) == (200, b"aiohttp")
