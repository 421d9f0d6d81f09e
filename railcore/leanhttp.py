"""The KServe v2 infer call over HTTP/1.1 without aiohttp's server in the way, for the gateway's port and
the edge runtime's Unix socket alike.

aiohttp's server costs ~90-165 us of CPU per request here before any handler runs (a bare aiohttp echo);
a plain ``asyncio.Protocol`` answers in ~15. ``LeanProtocol`` serves a strict subset itself: POST
``/v2/models/{m}[/versions/{v}]/infer`` over HTTP/1.1 with a Content-Length body, an ASCII head of
token-named headers, no Transfer-Encoding, Expect, Upgrade or Content-Encoding header, a Connection
header of ``keep-alive`` or ``close`` if any, a plain Content-Type and a body within ``max_body_bytes``. A subclass answers the call (``respond``); errors are
its to map, as ``railcore.web.errors_middleware`` maps them. Anything else (another route, method or
version, a chunked or oversized body, a body over ``split_body_bytes`` that does not arrive with its head,
a request not complete within ``wait_s``, anything it does not parse with certainty) and the connection is
handed, with the bytes read so far, to aiohttp's request handler for good, so every other case keeps
aiohttp's semantics, limits and errors exactly. Requests on one connection are answered in order
(pipelined ones wait their turn; reading pauses while a backlog builds); a connection idle for
``keepalive_s`` is closed, as aiohttp's keep-alive timeout does. A client sends the same head for each
request of one model, headers and body size: a connection's head that repeats its last one byte for byte
is taken as that one parsed (its headers are read-only, so no request can change them for the next).

``LeanSite`` listens (TCP, with TLS if given, or a Unix socket) with this protocol in front of an
``AppRunner``'s aiohttp handler.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

from railcore.web import Chunks, Reply, error_reply

log = logging.getLogger("railgate.http")

KEEPALIVE_S = 75.0  # aiohttp's own keep-alive timeout
_MAX_HEAD = 8190  # aiohttp's own line limit: a longer head is aiohttp's to refuse
_MAX_LINES = 64  # header lines; aiohttp refuses more than 128 (431), so a head with this many is its to judge
_PAUSE_AT = 1 << 20  # buffered bytes past the request in flight before reading pauses
_TARGET = re.compile(rb"/v2/models/([A-Za-z0-9._\-]+)(?:/versions/([A-Za-z0-9._\-]+))?/infer")
# A header line ``token: value`` ended by CRLF (the value without CR or LF: an obs-fold line has no name, and
# a lone CR in a value is aiohttp's to judge): its name, and its value less the spaces and tabs around it.
# Greedy, so a line is matched in one pass (a lazy value tried each of its characters against the end).
_LINE = r"([!#$&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*[^ \t\r\n])?[ \t]*\r\n"
_HEADER_BLOCK = re.compile(f"(?:{_LINE})*")  # the whole block after the request line, every line such
_HEADER_LINE = re.compile(_LINE)
_HAND_OFF_HEADERS = ("Transfer-Encoding", "Expect", "Upgrade", "Content-Encoding")
# A Connection header served here: keep-alive (HTTP/1.1's default, as python-requests sends it) or close.
_CONNECTION = frozenset(("keep-alive", "close"))
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")


# What ``_write`` writes itself, by the canonical names every ``respond`` writes headers with.
_OWN_HEADERS = frozenset(("Content-Length", "Date", "Server", "Connection"))
_SERVER = f"Server: {SERVER_SOFTWARE}"
_STATUS_LINES = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}" for s in HTTPStatus}


# A request's head as parsed: its length, the body's, model, version, headers (read-only: one repeated head's
# headers serve each of its requests), content type, and whether the client closes after the reply.
_Head = tuple[int, int, str, str, CIMultiDictProxy[str], str, bool]


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


class LeanProtocol(asyncio.Protocol):
    """One connection. A subclass sets ``component`` (for "internal error in the ...") and answers in
    ``respond``; ``closing`` says whether each reply is the connection's last (a drain)."""

    component = "server"

    def __init__(
        self,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[LeanProtocol],
        max_body_bytes: int,
        *,
        split_body_bytes: int,
        wait_s: float,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.fallback = fallback  # aiohttp's request handler factory (web.Server)
        self.connections = connections
        self.max_body_bytes = max_body_bytes
        self.split_body_bytes = split_body_bytes  # the largest body waited for when it comes after its head
        self.wait_s = wait_s  # how long a request may take to arrive whole before aiohttp takes over
        self.keepalive_s = keepalive_s
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.paused = False
        self.handed = False
        self.loop = asyncio.get_running_loop()
        self.last = 0.0  # loop time of the last reply (or of the connection), for the keep-alive timeout
        self.idle: asyncio.TimerHandle | None = None
        self.late: asyncio.TimerHandle | None = None  # armed while a request is incomplete
        self.head: _Head | None = None  # its body still coming
        # The last head parsed and what it said: a client sends the same head again and again (the same model,
        # headers and body size), and a repeated one is taken as parsed, for a comparison of its bytes.
        self.seen: tuple[bytes, _Head] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connections.add(self)
        self.last = self.loop.time()
        if self.keepalive_s > 0:
            self.idle = self.loop.call_at(self.last + self.keepalive_s, self._check_idle)

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
        self._cancel_timers()
        if self.task is not None:
            self.task.cancel()  # the caller is gone (as aiohttp's handler_cancellation)

    def eof_received(self) -> bool | None:
        return None  # the transport closes, as aiohttp's handler lets it: nothing more can come

    # -- answering -------------------------------------------------------------------------------

    async def respond(
        self, model: str, version: str, headers: CIMultiDictProxy[str], content_type: str, body: bytes
    ) -> Reply:
        raise NotImplementedError

    def closing(self) -> bool:
        """Whether the reply about to be written is the connection's last (``Connection: close``)."""
        return False

    def gone(self) -> bool:
        """Whether the caller has gone (the connection closed or closing)."""
        transport = self.transport
        return transport is None or transport.is_closing()

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
            if self.buffer and self.late is None:
                self.late = self.loop.call_later(self.wait_s, self._hand_off_late)
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            return
        if self.late is not None:
            self.late.cancel()
            self.late = None
        self.task = self.loop.create_task(self._answer(*request))

    def _parse(self) -> tuple[str, str, CIMultiDictProxy[str], str, bytes, bool] | None:
        """The next request (model, version, headers, content type, body, whether the client closes after its
        reply), None if it is not all here yet. A head whose body is still coming is parsed once, and kept."""
        head = self.head
        if head is None:
            head = self._parse_head()
            if head is None:
                return None
        end, length, model, version, headers, content_type, close = head
        buffer = self.buffer
        total = end + 4 + length
        if len(buffer) < total:
            if length > self.split_body_bytes:
                raise _HandOff  # a large body is read by aiohttp's path, within the reading budget as it arrives
            self.head = head
            return None
        self.head = None
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        return model, version, headers, content_type, body, close

    def _parse_head(self) -> _Head | None:
        """The next request's head, None if it is not all here yet; the last one's again if its bytes are."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise _HandOff
            return None
        if end > _MAX_HEAD:
            raise _HandOff  # a head past one line's limit may hold a line past it: aiohttp's to refuse (400)
        head = bytes(buffer[:end])
        seen = self.seen
        if seen is not None and seen[0] == head:
            return seen[1]
        parsed = self._parse_new_head(head)
        self.seen = head, parsed
        return parsed

    def _parse_new_head(self, head: bytes) -> _Head:
        """``head`` (the bytes before its blank line) parsed, or ``_HandOff``."""
        lines = head.count(b"\n")
        if (
            lines >= _MAX_LINES
            or not head.isascii()
            or b"\0" in head
            or lines != head.count(b"\r\n")
            or b"\r\r" in head
        ):
            raise _HandOff
        first, _, rest = head.partition(b"\r\n")
        parts = first.split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            raise _HandOff
        target = _TARGET.fullmatch(parts[1])
        if target is None:
            raise _HandOff
        block = rest.decode("ascii") + "\r\n" if rest else ""  # ASCII: checked above
        if _HEADER_BLOCK.fullmatch(block) is None:
            raise _HandOff
        headers = CIMultiDictProxy(CIMultiDict(_HEADER_LINE.findall(block)))
        for name in _HAND_OFF_HEADERS:
            if name in headers:
                raise _HandOff
        lengths = headers.getall("Content-Length", [])
        if len(lengths) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            raise _HandOff
        length = int(lengths[0])
        if length > self.max_body_bytes:
            raise _HandOff  # aiohttp's path answers 413 as it always has
        raw_type = headers.getall("Content-Type", [])
        if len(raw_type) > 1 or (raw_type and _CONTENT_TYPE.fullmatch(raw_type[0].split(";")[0].strip()) is None):
            raise _HandOff
        content_type = raw_type[0].split(";")[0].strip().lower() if raw_type else "application/octet-stream"
        connection = headers.getall("Connection", [])
        if len(connection) > 1 or (connection and connection[0].lower() not in _CONNECTION):
            raise _HandOff  # another hop-by-hop token (or several headers): aiohttp's to judge
        close = bool(connection) and connection[0].lower() == "close"
        model, version = target.group(1).decode(), target.group(2)
        return len(head), length, model, version.decode() if version else "", headers, content_type, close

    async def _answer(
        self, model: str, version: str, headers: CIMultiDictProxy[str], content_type: str, body: bytes, close: bool
    ) -> None:
        try:
            try:
                status, chunks, reply_headers = await self.respond(model, version, headers, content_type, body)
            except Exception:
                log.exception("event=unhandled component=%s path=/v2/models/%s/infer", self.component, model)
                status, chunks, reply_headers = error_reply(
                    500, f"internal error in the {self.component}", {}, content_type
                )
            self._write(status, chunks, reply_headers, close)
        finally:
            self.task = None
        self.last = self.loop.time()
        # The next request, if any of it is here (or reading was paused for it): an empty buffer has none.
        if (self.buffer or self.paused) and self.transport is not None and self.transport.is_closing() is False:
            self._next()

    def _write(self, status: int, chunks: Chunks, headers: dict[str, str], close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        close = close or self.closing()
        lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        for name, value in headers.items():
            if name not in _OWN_HEADERS:
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {sum(map(len, chunks))}\r\nDate: {_DATE.now()}\r\n{_SERVER}")
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport.writelines([head, *chunks])
        if close:
            transport.close()  # after what is buffered is written

    # -- timers and hand-off -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        """The keep-alive timeout: close a connection with nothing in flight or buffered for ``keepalive_s``."""
        self.idle = None
        if self.transport is None or self.handed:
            return
        now = self.loop.time()
        if self.task is None and not self.buffer and now - self.last >= self.keepalive_s:
            self.transport.close()
            return
        self.idle = self.loop.call_at(max(self.last, now) + self.keepalive_s, self._check_idle)

    def _hand_off_late(self) -> None:
        """A request not whole within ``wait_s``: aiohttp reads the rest, with its own limits and errors."""
        self.late = None
        if self.transport is not None and not self.handed and self.task is None:
            self._hand_off()

    def _cancel_timers(self) -> None:
        for handle in (self.idle, self.late):
            if handle is not None:
                handle.cancel()
        self.idle = self.late = None

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting from the bytes not yet answered."""
        transport = self.transport
        assert transport is not None and self.task is None
        self.handed = True
        self._cancel_timers()
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


ProtocolFactory = Callable[[Callable[[], asyncio.Protocol], set[LeanProtocol]], LeanProtocol]


class LeanSite:
    """A listener whose connections start on ``protocol`` (a ``LeanProtocol`` made with aiohttp's handler
    of ``runner``, set up first, and the site's connection set) and are handed to aiohttp for anything else.
    ``stop`` closes the listener; ``close`` then ends the lean connections (calls in flight finish first),
    before ``runner.cleanup()`` ends aiohttp's."""

    def __init__(self, runner: web.AppRunner, protocol: ProtocolFactory) -> None:
        self.runner = runner
        self.protocol = protocol
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[LeanProtocol] = set()

    def _factory(self) -> Callable[[], LeanProtocol]:
        handler = self.runner.server
        if handler is None:
            raise RuntimeError("LeanSite: set the runner up first")
        return lambda: self.protocol(handler, self.connections)

    async def start_unix(self, path: str) -> None:
        self.server = await asyncio.get_running_loop().create_unix_server(self._factory(), path)

    async def start_socket(self, sock: socket.socket, ssl_context: ssl.SSLContext | None, backlog: int) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self._factory(), sock=sock, ssl=ssl_context, backlog=backlog
        )

    async def stop(self) -> None:
        """Close the listener; connections already accepted stay."""
        if self.server is not None:
            self.server.close()

    async def close(self, timeout_s: float = 10.0) -> None:
        await self.stop()
        await asyncio.gather(*(c.close(timeout_s) for c in list(self.connections)))
        self.server = None
