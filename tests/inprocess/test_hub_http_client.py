"""The HTTP hub client on real loopback sockets, under asyncio's loop and uvloop: keep-alive reuse,
Content-Length and chunked replies, cut and garbage replies, a hub closing an idle connection, a
cancelled or timed-out call closing its connection, and the pool's bound.

The hub is ``ScriptedHub``, a named fake: a raw HTTP/1.1 server written here, because a real Triton
cannot be made to send a chunked, cut or garbage reply on demand. Each request it reads is answered
by the next step of its script (then a valid reply when the script runs out)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import pytest
import uvloop

from gateway.backends.hubhttp import MAX_HEAD_BYTES, HubConnections, origin
from gateway.backends.triton import TritonHttpBackend
from gateway.config import HubSpec
from railcore.errors import DeadlineExceeded, HubProtocolError, HubRejected, HubUnreachable

X = np.arange(64, dtype=np.float32).reshape(1, 64)
Y = np.arange(10, dtype=np.float32).reshape(1, 10)
_HEADER = json.dumps(
    {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 10], "parameters": {"binary_data_size": 40}}]}
).encode()
BODY = _HEADER + Y.tobytes()
Writer = asyncio.StreamWriter
Step = Callable[[Writer], Awaitable[bool]]  # writes a reply; False: close the connection after it


def _head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def ok(writer: Writer) -> bool:
    writer.write(_head(Content_Length=str(len(BODY)), Inference_Header_Content_Length=str(len(_HEADER))) + BODY)
    return True


async def ok_then_close(writer: Writer) -> bool:
    await ok(writer)
    return False


async def chunked(writer: Writer) -> bool:
    writer.write(_head(Transfer_Encoding="chunked", Inference_Header_Content_Length=str(len(_HEADER))))
    for i in range(0, len(BODY), 7):  # odd-sized chunks, each its own write
        piece = BODY[i : i + 7]
        writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
    return True


async def cut(writer: Writer) -> bool:
    writer.write(_head(Content_Length=str(len(BODY)), Inference_Header_Content_Length=str(len(_HEADER))))
    writer.write(BODY[: len(BODY) // 2])
    return False


async def garbage(writer: Writer) -> bool:
    writer.write(b"SPAM SPAM SPAM\r\n\r\n")
    return True


async def huge(writer: Writer) -> bool:
    writer.write(_head(Content_Length=str(10**12)))
    return True


async def endless_head(writer: Writer) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (2 * MAX_HEAD_BYTES))
    return True


async def rejected(writer: Writer) -> bool:
    body = json.dumps({"error": "unexpected shape for input 'pixels'"}).encode()
    writer.write(_head("400 Bad Request", Content_Length=str(len(body))) + body)
    return True


class ScriptedHub:
    """A raw HTTP/1.1 server on loopback answering each request with its script's next step."""

    def __init__(self, *script: Step) -> None:
        self.script = list(script)
        self.connections = 0
        self.closed = 0  # connections whose client went away (EOF or reset)
        self.requests: list[tuple[bytes, bytes]] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[Writer] = []

    async def __aenter__(self) -> ScriptedHub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # each connection closed under its reader, which then sees its end
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append((head, await reader.readexactly(length)))
                step = self.script.pop(0) if self.script else ok
                if step is hang:  # no answer; wait for the client (or the hub stopping) to close the connection
                    await reader.read(1)
                    break
                if not await step(writer):
                    break
                await writer.drain()
        finally:
            self.closed += 1
            writer.close()
            self._tasks.discard(task)


async def hang(writer: Writer) -> bool:
    """Never answers (ScriptedHub waits for the connection's end itself)."""
    raise AssertionError("run by ScriptedHub itself")


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (polled each loop turn) within ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (a condition on sockets, bounded in time)
            await asyncio.sleep(0.001)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(scenario, 20))

    return run


async def _backend(url: str, **spec: Any) -> TritonHttpBackend:
    backend = TritonHttpBackend(HubSpec("near", url, **spec))
    await backend.start()
    return backend


async def _infer(backend: TritonHttpBackend, budget_s: float = 5.0) -> np.ndarray:
    deadline = asyncio.get_running_loop().time() + budget_s
    return (await backend.infer("digits", "", {"pixels": X}, ["y"], deadline))["y"]


def test_sequential_calls_reuse_one_keep_alive_connection(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub() as hub:
            backend = await _backend(hub.url)
            try:
                for _ in range(5):
                    assert (await _infer(backend)).tolist() == Y.tolist()
            finally:
                await backend.close()
            assert hub.connections == 1
            head, body = hub.requests[0]
            assert head.startswith(b"POST /v2/models/digits/infer HTTP/1.1\r\n")
            length = int(head.lower().split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
            assert body[length:] == X.tobytes()
            assert json.loads(body[:length])["inputs"][0]["parameters"]["binary_data_size"] == 256

    run(scenario())


def test_a_chunked_reply_is_read_whole(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub(chunked, chunked) as hub:
            backend = await _backend(hub.url)
            try:
                for _ in range(3):  # two chunked, then one Content-Length, all on one connection
                    assert (await _infer(backend)).tolist() == Y.tolist()
            finally:
                await backend.close()
            assert hub.connections == 1

    run(scenario())


@pytest.mark.parametrize(
    ("step", "expected", "match"),
    [
        (cut, HubUnreachable, "hub near failed: ConnectionLost: the hub closed the connection mid-reply"),
        (garbage, HubProtocolError, "hub near failed: sent an unreadable reply: not an HTTP/1.x status line"),
        (huge, HubProtocolError, "hub near failed: sent an unreadable reply: reply body of 1000000000000 bytes"),
        (
            endless_head,
            HubProtocolError,
            f"hub near failed: sent an unreadable reply: reply head over {MAX_HEAD_BYTES}",
        ),
        (rejected, HubRejected, r"hub near refused the request \(400\): unexpected shape for input 'pixels'"),
    ],
    ids=["cut_mid_body", "garbage_status_line", "huge_length", "endless_head", "hubs_error_message_kept"],
)
def test_a_bad_reply_is_a_clear_error_and_the_next_call_succeeds(run, step: Step, expected: type, match: str) -> None:
    async def scenario() -> None:
        async with ScriptedHub(step) as hub:
            backend = await _backend(hub.url)
            try:
                with pytest.raises(expected, match=match):
                    await _infer(backend)
                assert (await _infer(backend)).tolist() == Y.tolist()
            finally:
                await backend.close()
            assert hub.connections == (1 if step is rejected else 2), "a broken connection is never reused"

    run(scenario())


def test_a_hub_closing_an_idle_connection_makes_the_next_call_open_a_fresh_one(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub(ok_then_close) as hub:
            backend = await _backend(hub.url)
            try:
                assert (await _infer(backend)).tolist() == Y.tolist()
                assert backend.pool is not None
                await until(lambda: hub.closed == 1 and backend.pool is not None and backend.pool.reusable == 0)
                assert (await _infer(backend)).tolist() == Y.tolist()
            finally:
                await backend.close()
            assert hub.connections == 2 and len(hub.requests) == 2, "nothing was sent twice"

    run(scenario())


def test_a_cancelled_call_closes_its_connection_and_the_next_call_gets_its_own_reply(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub(hang) as hub:
            backend = await _backend(hub.url)
            try:
                call = asyncio.ensure_future(_infer(backend))
                await until(lambda: len(hub.requests) == 1)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await until(lambda: hub.closed == 1)  # the hub saw the cancelled call's connection go
                assert (await _infer(backend)).tolist() == Y.tolist()
            finally:
                await backend.close()
            assert hub.connections == 2

    run(scenario())


def test_a_hub_that_never_answers_is_a_deadline_on_time_and_its_connection_closed(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub(hang) as hub:
            backend = await _backend(hub.url)
            loop = asyncio.get_running_loop()
            try:
                started = loop.time()
                with pytest.raises(DeadlineExceeded, match="hub near did not answer 'digits' before the deadline"):
                    await _infer(backend, budget_s=0.2)
                assert loop.time() - started < 2.0
                await until(lambda: hub.closed == 1)
                assert backend.inflight == 0
            finally:
                await backend.close()

    run(scenario())


def test_the_pool_never_opens_more_than_its_limit(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub() as hub:
            backend = await _backend(hub.url, max_connections=2)
            try:
                results = await asyncio.gather(*(_infer(backend) for _ in range(8)))
            finally:
                await backend.close()
            assert all(r.tolist() == Y.tolist() for r in results)
            assert hub.connections <= 2 and len(hub.requests) == 8

    run(scenario())


def test_a_refused_connection_is_hub_unreachable(run) -> None:
    async def scenario() -> None:
        async with ScriptedHub() as hub:
            url = hub.url
        backend = await _backend(url)  # the hub has stopped listening: its port refuses
        try:
            with pytest.raises(HubUnreachable, match="hub near failed: ConnectionRefusedError"):
                await _infer(backend)
        finally:
            await backend.close()

    run(scenario())


def test_the_probe_and_discovery_calls_share_the_pool(run) -> None:
    async def index(writer: Writer) -> bool:
        body = json.dumps([{"name": "digits", "state": "UNAVAILABLE"}]).encode()
        writer.write(_head(Content_Length=str(len(body))) + body)
        return True

    async def ready(writer: Writer) -> bool:
        writer.write(_head(Content_Length="0"))
        return True

    async def scenario() -> None:
        async with ScriptedHub(ready, index) as hub:
            backend = await _backend(hub.url)
            try:
                assert await backend.probe(5.0)
                assert await backend.discover() == {}
            finally:
                await backend.close()
            assert [h.split(b"\r\n")[0] for h, _ in hub.requests] == [
                b"GET /v2/health/ready HTTP/1.1",
                b"POST /v2/repository/index HTTP/1.1",
            ]
            assert hub.connections == 1

    run(scenario())


def test_an_origin_names_its_host_header_and_tls_name() -> None:
    plain = origin("http://127.0.0.1:8000", None)
    assert (plain.host, plain.port, plain.ssl, plain.authority) == ("127.0.0.1", 8000, None, "127.0.0.1:8000")
    named = origin("https://127.0.0.1:8443", None, "hub.example")
    assert named.ssl is not None and named.server_hostname == "hub.example"
    assert (named.host, named.authority) == ("127.0.0.1", "hub.example:8443")
    with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
        origin("ftp://x", None)
    assert HubConnections(plain, 1).reusable == 0


def test_pending_requests_are_read_from_the_metrics_url_through_its_own_pool(run) -> None:
    async def metrics(writer: Writer) -> bool:
        body = b'nv_inference_pending_request_count{model="digits",version="1"} 3\n'
        writer.write(_head(Content_Length=str(len(body))) + body)
        return True

    async def scenario() -> None:
        async with ScriptedHub(metrics) as hub:
            backend = await _backend(hub.url, metrics_url=f"{hub.url}/metrics?family=pending")
            try:
                assert await backend.pending_requests() == 3
            finally:
                await backend.close()
            assert hub.requests[0][0].split(b"\r\n")[0] == b"GET /metrics?family=pending HTTP/1.1"

    run(scenario())
