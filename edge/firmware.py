"""The firmware's hot call on the Unix socket without aiohttp's server in the way.

aiohttp's server costs ~165 us of CPU per request here before any handler runs (a bare aiohttp echo);
a plain ``asyncio.Protocol`` answers in ~15. ``FirmwareProtocol`` serves a strict subset itself: POST
``/v2/models/{m}[/versions/{v}]/infer`` over HTTP/1.1 with a Content-Length body, an ASCII head of
token-named headers, no Transfer-Encoding, Expect, Upgrade or Connection header, a plain Content-Type
and a body within ``max_body_bytes``. The call goes through ``server.answer``, the aiohttp handler's
own code, and errors map as ``railcore.web.errors_middleware`` maps them. Anything else (another route,
another method or version, a chunked or oversized body, anything it does not parse with certainty)
and the connection is handed, with the bytes read so far, to aiohttp's request handler for good, so
every other case keeps aiohttp's semantics and errors exactly. Requests on one connection are answered
in order (pipelined ones wait their turn; reading pauses while a backlog builds).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from edge.answer import answer
from edge.runtime import EdgeRuntime
from railcore.errors import RailgateError
from railcore.protocol.codec import DecodeLimits, encode_error
from railcore.protocol.msgpack_codec import is_msgpack
from railcore.protocol.types import Encoding

log = logging.getLogger("railgate.edge.server")

_MAX_HEAD = 8190  # aiohttp's own line limit: a longer head is aiohttp's to refuse
_PAUSE_AT = 1 << 20  # buffered bytes past the request in flight before reading pauses
_TARGET = re.compile(rb"/v2/models/([A-Za-z0-9._\-]+)(?:/versions/([A-Za-z0-9._\-]+))?/infer")
# The header block after the request line, every line ``token: value`` ended by CRLF (the value without
# CR or LF: an obs-fold line has no name, and a lone CR in a value is aiohttp's to judge); and each line's
# name and value, less the spaces and tabs around the value.
_HEADER_BLOCK = re.compile(r"(?:[!#$&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*")
_HEADER_LINE = re.compile(r"([^:]+):[ \t]*([^\r\n]*?)[ \t]*\r\n")
_HAND_OFF_HEADER = re.compile(r"(?:^|\n)(?:transfer-encoding|expect|upgrade|connection|content-encoding):", re.I)
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")


class _HandOff(Exception):
    """The request is not one this path serves with certainty: aiohttp takes the connection."""


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
        return self.text


_DATE = _Date()


class FirmwareProtocol(asyncio.Protocol):
    def __init__(
        self,
        runtime: EdgeRuntime,
        limits: DecodeLimits,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[FirmwareProtocol],
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.fallback = fallback  # aiohttp's request handler factory (web.Server)
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.paused = False
        self.handed = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._next()
        elif len(self.buffer) > _PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        if self.task is not None:
            self.task.cancel()  # the caller is gone (as aiohttp's handler_cancellation)

    def eof_received(self) -> bool | None:
        return None  # close once the reply in flight, if any, is written: nothing more can come

    # -- requests --------------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the next complete request in the buffer, hand the connection off, or wait for bytes."""
        if self.transport is None or self.handed:
            return
        try:
            request = self._parse()
        except _HandOff:
            self._hand_off()
            return
        if request is None:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            return
        self.task = asyncio.get_running_loop().create_task(self._answer(*request))

    def _parse(self) -> tuple[str, str, CIMultiDict[str], str, bytes] | None:
        """The next request (model, version, headers, content type, body), None if it is not all here yet."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise _HandOff
            return None
        head = bytes(buffer[:end])
        if not head.isascii() or b"\0" in head or head.count(b"\n") != head.count(b"\r\n") or b"\r\r" in head:
            raise _HandOff
        first, _, rest = head.partition(b"\r\n")
        parts = first.split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            raise _HandOff
        target = _TARGET.fullmatch(parts[1])
        if target is None:
            raise _HandOff
        block = rest.decode("ascii") + "\r\n" if rest else ""  # ASCII: checked above
        if _HEADER_BLOCK.fullmatch(block) is None or _HAND_OFF_HEADER.search(block) is not None:
            raise _HandOff
        headers: CIMultiDict[str] = CIMultiDict(_HEADER_LINE.findall(block))
        lengths = headers.getall("Content-Length", [])
        if len(lengths) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            raise _HandOff
        length = int(lengths[0])
        if length > self.runtime.config.max_body_bytes:
            raise _HandOff  # aiohttp's path answers 413 as it always has
        raw_type = headers.getall("Content-Type", [])
        if len(raw_type) > 1 or (raw_type and _CONTENT_TYPE.fullmatch(raw_type[0].split(";")[0].strip()) is None):
            raise _HandOff
        content_type = raw_type[0].split(";")[0].strip().lower() if raw_type else "application/octet-stream"
        total = end + 4 + length
        if len(buffer) < total:
            return None
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        version = target.group(2)
        return target.group(1).decode(), version.decode() if version else "", headers, content_type, body

    async def _answer(
        self, model: str, version: str, headers: CIMultiDict[str], content_type: str, body: bytes
    ) -> None:
        try:
            try:
                chunks, reply_headers = await answer(
                    self.runtime, self.limits, model, version, headers, content_type, body
                )
                status = 200
            except RailgateError as exc:
                status, chunks, reply_headers = self._error(exc.status, exc.message, exc.headers, content_type)
            except Exception:
                log.exception("event=unhandled component=edge runtime path=/v2/models/%s/infer", model)
                status, chunks, reply_headers = self._error(500, "internal error in the edge runtime", {}, content_type)
            self._write(status, chunks, reply_headers)
        finally:
            self.task = None
        if self.transport is not None and self.transport.is_closing() is False:
            self._next()

    @staticmethod
    def _error(
        status: int, message: str, headers: dict[str, str], content_type: str
    ) -> tuple[int, list[bytes | memoryview], dict[str, str]]:
        encoding = Encoding.MSGPACK if is_msgpack(content_type) else Encoding.JSON
        body, body_type = encode_error(message, encoding)
        return status, [body], {**headers, "Content-Type": body_type}

    def _write(self, status: int, chunks: list[bytes | memoryview], headers: dict[str, str]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        length = sum(len(c) for c in chunks)
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        for name, value in headers.items():
            if name.lower() not in ("content-length", "date", "server"):
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {length}")
        lines.append(f"Date: {_DATE.now()}")
        lines.append(f"Server: {SERVER_SOFTWARE}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport.writelines([head, *chunks])

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting from the bytes not yet answered."""
        transport = self.transport
        assert transport is not None and self.task is None
        self.handed = True
        self.connections.discard(self)
        protocol = self.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.paused:
            self.paused = False
            transport.resume_reading()
        data, self.buffer = bytes(self.buffer), bytearray()
        if data:
            protocol.data_received(data)

    async def close(self, timeout_s: float) -> None:
        """Shutdown: let the request in flight finish (within ``timeout_s``), then close."""
        if self.task is not None:
            await asyncio.wait([self.task], timeout=timeout_s)
            if self.task is not None:
                self.task.cancel()
        if self.transport is not None:
            self.transport.close()


class FirmwareSite:
    """``railgate edge``'s Unix socket: infer calls on the lean path, any other request handed to aiohttp's
    handler of ``runner`` (set up first). ``stop`` before ``runner.cleanup()``: calls in flight finish first."""

    def __init__(self, runner: web.AppRunner, runtime: EdgeRuntime, limits: DecodeLimits, path: str) -> None:
        self.runner = runner
        self.runtime = runtime
        self.limits = limits
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[FirmwareProtocol] = set()

    async def start(self) -> None:
        handler = self.runner.server
        if handler is None:
            raise RuntimeError("FirmwareSite: set the runner up first")
        self.server = await asyncio.get_running_loop().create_unix_server(
            lambda: FirmwareProtocol(self.runtime, self.limits, handler, self.connections), self.path
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.server is None:
            return
        self.server.close()
        await asyncio.gather(*(c.close(timeout_s) for c in list(self.connections)))
        self.server = None
