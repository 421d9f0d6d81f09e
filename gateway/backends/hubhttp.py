"""A lean HTTP/1.1 client for one hub's HTTP API: the hub calls without aiohttp's per-call machinery.

aiohttp's client spends, per call, more than the rest of a hub call together (request and response
objects, header multidicts, a stream reader, its timer): a steady few % of the gateway's CPU. A hub
speaks one small dialect, so this client does only what it needs:

- ``HubConnections``: a bounded keep-alive pool of ``_Connection``s (asyncio protocols on the running
  loop), reused last-in first-out; a connection the hub closed while idle is dropped when next taken
  and a fresh one opened. Nothing is ever sent twice: a call that fails after its request was written
  fails (an infer is not safe to replay), and the forwarder's failover decides what happens next.
- The request head is pre-built by the caller except its lengths; the body goes out with
  ``transport.writelines`` (no join, memoryviews as they are).
- The reply is parsed with ``bytes.find``: the status line, ``Content-Length``, chunked transfer
  coding (a proxy may use it) or, failing both, the body up to the connection's end; bounded, so a
  hostile hub cannot grow memory without limit.
- One deadline per call; a call cancelled or timed out mid-reply closes its connection (its reply
  would otherwise be read as the next call's).

Errors: ``ReplyUnreadable`` (not HTTP, too large, bad lengths) and ``ConnectionLost`` (closed before
the reply ended), beside the ``OSError``/``ssl.SSLError`` of connecting and ``TimeoutError``; the
backend translates them into ours once, by cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024  # a reply's status line and headers
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a reply's body (a batch's outputs)
IDLE_S = 30.0  # an idle pooled connection older than this is closed when next taken, not reused


class ReplyUnreadable(Exception):
    """The hub's reply is not HTTP we can read (status line, headers, lengths, size)."""


class ConnectionLost(ConnectionError):
    """The connection closed before the reply ended."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[bytes, bytes]  # names lower-case
    body: bytes

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


_HEAD_END = b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[int, bool, dict[bytes, bytes]]:
    """(status, keep-alive, headers) of a reply head (without its blank line)."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    code = status_line[9:12]
    framed = status_line.startswith(b"HTTP/1.") and status_line[8:9] == b" " and status_line[12:13] in (b"", b" ")
    if not framed or not code.isdigit():
        raise ReplyUnreadable(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ReplyUnreadable(f"not an HTTP header line: {line[:80]!r}")
        headers[name.lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    keep_alive = connection != b"close" if status_line[7:8] == b"1" else connection == b"keep-alive"
    return int(code), keep_alive, headers


class _Connection(asyncio.Protocol):
    """One connection to the hub: writes a request, parses its one reply, then idles in the pool."""

    def __init__(self, max_reply: int) -> None:
        self.max_reply = max_reply
        self.transport: asyncio.Transport | None = None
        self.lost = False  # closed (either side) or broken: never reused
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._head: tuple[int, bool, dict[bytes, bytes]] | None = None
        self._length: int | None = None  # body length; None: chunked or up to the end
        self._chunked = False
        self._body_at = 0  # where the body starts in _buf
        self._chunks: list[bytes] = []
        self._chunk_at = 0  # parse position of the chunked body in _buf
        self._chunked_size = 0
        self.keep_alive = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for: the stream is out of step
            self._broken()
            return
        self._buf += data
        try:
            reply = self._parse()
        except ReplyUnreadable as exc:
            self._fail(exc)
            return
        if reply is not None:
            waiter, self._waiter = self._waiter, None
            if self._buf:  # more than one reply's bytes: out of step, never reuse
                self.lost = True
            waiter.set_result(reply)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None and self._head is not None and self._length is None and not self._chunked:  # up to the end
            status, _, headers = self._head
            waiter.set_result(Reply(status, headers, bytes(self._buf[self._body_at :])))
            return
        detail = f": {exc}" if exc is not None else ""
        where = "before its reply" if not self._buf and self._head is None else "mid-reply"
        waiter.set_exception(ConnectionLost(f"the hub closed the connection {where}{detail}"))

    # -- one exchange ------------------------------------------------------------------------

    def send(self, parts: list[bytes | memoryview], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._buf.clear()
        self._head = None
        self._length = None
        self._chunked = False
        self._chunks = []
        self._chunked_size = 0
        self._waiter = waiter = loop.create_future()
        self.transport.writelines(parts)
        return waiter

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def _broken(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._broken()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self) -> Reply | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(_HEAD_END)
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ReplyUnreadable(f"reply head over {MAX_HEAD_BYTES} bytes without its end")
                return None
            self._head = status, self.keep_alive, headers = _parse_head(bytes(buf[:end]))
            self._body_at = end + 4
            if 100 <= status < 200:  # an interim reply (100 Continue): the real one follows
                del buf[: self._body_at]
                self._head = None
                return self._parse()
            self._framing(status, headers)
        status, _, headers = self._head
        if self._chunked:
            return self._parse_chunks(status, headers)
        if self._length is None:  # up to the connection's end (connection_lost finishes it)
            if len(buf) - self._body_at > self.max_reply:
                raise ReplyUnreadable(f"reply body over {self.max_reply} bytes")
            return None
        end = self._body_at + self._length
        if len(buf) < end:
            return None
        with memoryview(buf) as view:  # one copy, not a bytearray slice and then its bytes
            body = bytes(view[self._body_at : end])
        del buf[:end]
        return Reply(status, headers, body)

    def _framing(self, status: int, headers: dict[bytes, bytes]) -> None:
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                raise ReplyUnreadable(f"unsupported Transfer-Encoding {coding[:40]!r}")
            self._chunked = True
            self._chunk_at = self._body_at
            return
        length = headers.get(b"content-length")
        if status in (204, 304):
            self._length = 0
        elif length is not None:
            if not length.isdigit() or len(length) > 18:
                raise ReplyUnreadable(f"bad Content-Length {length[:40]!r}")
            self._length = int(length)
            if self._length > self.max_reply:
                raise ReplyUnreadable(f"reply body of {self._length} bytes, over {self.max_reply}")
        else:
            self.keep_alive = False  # the body ends with the connection

    def _parse_chunks(self, status: int, headers: dict[bytes, bytes]) -> Reply | None:
        buf = self._buf
        while True:
            line_end = buf.find(b"\r\n", self._chunk_at)
            if line_end < 0:
                if len(buf) - self._chunk_at > 1024:
                    raise ReplyUnreadable("chunk size line over 1024 bytes")
                return None
            size_text = bytes(buf[self._chunk_at : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ReplyUnreadable(f"bad chunk size {size_text[:40]!r}") from None
            if size < 0 or self._chunked_size + size > self.max_reply:
                raise ReplyUnreadable(f"chunked reply body over {self.max_reply} bytes")
            if size == 0:  # the last chunk: skip trailers up to the blank line
                end = buf.find(_HEAD_END, line_end)
                if end < 0:
                    if len(buf) - line_end > MAX_HEAD_BYTES:
                        raise ReplyUnreadable(f"chunked trailers over {MAX_HEAD_BYTES} bytes")
                    return None
                del buf[: end + 4]
                return Reply(status, headers, b"".join(self._chunks))
            data_end = line_end + 2 + size
            if len(buf) < data_end + 2:
                return None
            if buf[data_end : data_end + 2] != b"\r\n":
                raise ReplyUnreadable("chunk not followed by CRLF")
            self._chunks.append(bytes(buf[line_end + 2 : data_end]))
            self._chunked_size += size
            self._chunk_at = data_end + 2


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a hub's HTTP API is dialled, and what its requests' Host header says."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    authority: str  # the Host header's value


def origin(url: str, context: ssl.SSLContext | None, server_name: str | None = None) -> Origin:
    """The ``Origin`` of ``url`` (http:// or https://); https without ``context``: the system's trust store."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    if tls and context is None:
        context = ssl.create_default_context()
    name = server_name or parts.hostname
    host_text = f"[{name}]" if ":" in name else name
    authority = host_text if port == (443 if tls else 80) else f"{host_text}:{port}"
    return Origin(parts.hostname, port, context if tls else None, name if tls else None, authority)


class HubConnections:
    """A bounded keep-alive pool of connections to one origin; ``request`` is one HTTP exchange."""

    def __init__(self, where: Origin, limit: int, *, max_reply: int = MAX_REPLY_BYTES, idle_s: float = IDLE_S) -> None:
        self.origin = where
        self.limit = limit
        self.max_reply = max_reply
        self.idle_s = idle_s
        self.opened = 0  # connections ever opened (tests read it: reuse shows as no new one)
        self._idle: list[_Connection] = []  # last in, first out: the warmest connection first
        self._count = 0  # open or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def reusable(self) -> int:
        """Idle connections still open (one the hub closed is counted out once the loop has seen it)."""
        return sum(1 for c in self._idle if not c.lost)

    async def request(self, parts: list[bytes | memoryview], deadline: float) -> Reply:
        """Send ``parts`` (a complete request: head then body) and read its reply, by ``deadline`` (loop time).

        Raises ``TimeoutError`` at the deadline, ``ReplyUnreadable``, ``ConnectionLost`` or the
        connect's ``OSError``. A request is written at most once."""
        loop = asyncio.get_running_loop()
        conn = self._take_idle(loop)
        if conn is None:
            conn = await self._open(loop, deadline)
        done = False
        timer = None
        try:
            waiter = conn.send(parts, loop)
            timer = loop.call_at(deadline, _expire, waiter)
            reply = await waiter
            done = True
        finally:
            if timer is not None:
                timer.cancel()
            self._release(conn, done and conn.keep_alive, loop)
        return reply

    def _take_idle(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            assert conn.transport is not None
            if not conn.lost and not conn.transport.is_closing() and loop.time() - conn.idle_since < self.idle_s:
                return conn
            self._discard(conn)
        return None

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        if self._closed:
            raise ConnectionLost("the hub client is closed")
        async with asyncio.timeout_at(deadline):
            while self._count >= self.limit:  # every connection busy: wait for one to come back
                slot = loop.create_future()
                self._waiters.append(slot)
                try:
                    await slot
                except BaseException:
                    if slot.done() and not slot.cancelled():  # woken and cancelled at once: pass the turn on
                        self._wake()
                    raise
                conn = self._take_idle(loop)
                if conn is not None:
                    return conn
            self._count += 1
            try:
                where = self.origin
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_reply),
                    where.host,
                    where.port,
                    ssl=where.ssl,
                    server_hostname=where.server_hostname,
                )
            except BaseException:
                self._count -= 1
                self._wake()
                raise
        self.opened += 1
        return conn

    def _release(self, conn: _Connection, reusable: bool, loop: asyncio.AbstractEventLoop) -> None:
        if reusable and not conn.lost and not self._closed:
            conn.idle_since = loop.time()
            self._idle.append(conn)
        else:
            self._discard(conn)
        self._wake()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._count -= 1

    def _wake(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        for slot in self._waiters:
            if not slot.done():
                slot.set_exception(ConnectionLost("the hub client is closed"))
        self._waiters.clear()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
