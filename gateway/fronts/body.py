"""Reading request bodies within bounds: one body's size by its encoding, and all bodies' bytes at once.

A JSON body becomes Python objects many times its size while it is parsed, so it has its own, smaller
limit (``limits.max_json_body_bytes``); binary and msgpack bodies, whose tensors stay the body's own
bytes, keep ``limits.max_body_bytes``. Every body being read or held is charged to one
``ReadingBudget`` (``limits.max_reading_bytes``) for as long as its request is in progress: when it is
spent a new body is refused at once (503, Retry-After) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from railcore.errors import BadRequest, PayloadTooLarge, RequestTimeout, Shedding
from railcore.protocol.codec import HEADER_LENGTH
from railcore.protocol.msgpack_codec import is_msgpack

RETRY_AFTER = {"Retry-After": "1"}
# What parsing a JSON body may build in Python objects, per byte of the body's limit (a body of
# floats takes about 4; ``json_codec.python_bytes_bound`` is checked against this before parsing).
JSON_PYTHON_BYTES_PER_BYTE = 16


class ReadingBudget:
    """Bytes of request bodies held at once, all connections together; a take that does not fit fails."""

    __slots__ = ("capacity", "held")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def try_take(self, size: int) -> bool:
        if self.held + size > self.capacity:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_body_bytes: int
    max_json_body_bytes: int
    timeout_s: float

    def for_request(self, content_type: str | None, header_length: int | None) -> tuple[int, str]:
        """The byte limit of this request's body, and the setting that names it."""
        if is_msgpack(content_type) or header_length is not None or self.max_body_bytes <= self.max_json_body_bytes:
            return self.max_body_bytes, "limits.max_body_bytes"
        return self.max_json_body_bytes, "limits.max_json_body_bytes"


class read_body:
    """``async with read_body(request, limits, budget, header_length) as body``: the request's body,
    charged to ``budget`` until the block exits; refused before a byte is read when its declared length
    is over its limit (413) or does not fit the budget (503). A class rather than an
    ``asynccontextmanager``: it runs once per request, and a generator-based one costs several times more."""

    __slots__ = ("_budget", "_header_length", "_limits", "_request", "held")

    def __init__(
        self, request: web.Request, limits: BodyLimits, budget: ReadingBudget, header_length: int | None
    ) -> None:
        self._request, self._limits, self._budget, self._header_length = request, limits, budget, header_length
        self.held = 0

    def _charge(self, size: int) -> None:
        if size > self.held:
            budget = self._budget
            if not budget.try_take(size - self.held):
                raise _shedding(budget)
            self.held = size

    async def __aenter__(self) -> bytearray:
        request, limits, header_length = self._request, self._limits, self._header_length
        declared = request.content_length
        # Content-Length counts the bytes on the wire; with a Content-Encoding aiohttp hands over the
        # inflated body, so only an identity body's length bounds its JSON header.
        encoding = request.headers.get("Content-Encoding")
        encoded = encoding is not None and encoding.strip().lower() not in ("", "identity")
        limit, setting = check_declared(limits, request.content_type, declared, header_length, encoded)
        if encoded:  # charge and cap what arrives instead (which also bounds a decompression bomb)
            declared = None
        try:
            self._charge(declared or 0)
            if request.content.is_eof():  # the whole body is buffered already: nothing to wait for, no timer
                return await _read(request, declared, limit, setting, self._charge)
            try:
                async with asyncio.timeout(limits.timeout_s):
                    return await _read(request, declared, limit, setting, self._charge)
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {limits.timeout_s:g} s") from None
        except BaseException:
            self._release()  # __aexit__ does not run when __aenter__ fails
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        held, self.held = self.held, 0
        self._budget.give(held)


def check_declared(
    limits: BodyLimits, content_type: str | None, declared: int | None, header_length: int | None, encoded: bool
) -> tuple[int, str]:
    """Refuse a body by what its head declares, before a byte of it is read: the JSON header's length
    against the body's and its own limit, the body against its encoding's limit. Its limit and setting."""
    limit, setting = limits.for_request(content_type, header_length)
    if header_length is not None and declared is not None and not encoded and header_length > declared:
        raise BadRequest(f"{HEADER_LENGTH} {str(header_length)[:40]} is larger than the body ({declared} bytes)")
    if header_length is not None and header_length > limits.max_json_body_bytes:
        raise PayloadTooLarge(
            f"{HEADER_LENGTH} {str(header_length)[:40]} is over limits.max_json_body_bytes "
            f"({limits.max_json_body_bytes} bytes)"
        )
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over {setting} ({limit} bytes)")
    return limit, setting


class held_body:
    """``async with held_body(body, content_type, limits, budget, header_length) as body``: a body that
    arrived whole with its head (railcore.leanhttp's path), checked as ``read_body`` checks a declared
    one and charged to ``budget`` until the block exits, so both paths refuse the same bodies alike."""

    __slots__ = ("_body", "_budget", "_content_type", "_header_length", "_limits", "held")

    def __init__(
        self, body: bytes, content_type: str, limits: BodyLimits, budget: ReadingBudget, header_length: int | None
    ) -> None:
        self._body, self._content_type, self._limits = body, content_type, limits
        self._budget, self._header_length = budget, header_length
        self.held = 0

    async def __aenter__(self) -> bytes:
        body, budget = self._body, self._budget
        check_declared(self._limits, self._content_type, len(body), self._header_length, False)
        if not budget.try_take(len(body)):
            raise _shedding(budget)
        self.held = len(body)
        return body

    async def __aexit__(self, *exc: object) -> None:
        held, self.held = self.held, 0
        self._budget.give(held)


def _shedding(budget: ReadingBudget) -> Shedding:
    return Shedding(
        f"the gateway is reading {budget.held} bytes of request bodies, its limit "
        f"(limits.max_reading_bytes) is {budget.capacity}: retry shortly",
        headers=RETRY_AFTER,
    )


async def _read(
    request: web.Request, declared: int | None, limit: int, setting: str, charge: Callable[[int], None]
) -> bytearray:
    """The body, grown as it arrives: memory follows what was sent, not what was declared (a slow client
    that declares the maximum and trickles holds its reservation, not the bytes). A body of undeclared
    length is charged as it grows; a declared one was charged in full before the first byte."""
    content = request.content
    cap, cap_setting = (declared, "its Content-Length") if declared is not None else (limit, setting)
    body = bytearray()
    while chunk := await content.readany():
        size = len(body) + len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"body of more than {cap} bytes is over {cap_setting} ({cap} bytes)")
        if declared is None:
            charge(size)
        body += chunk  # large buffers grow in place (realloc of a mapped block), not by copying
    return body
