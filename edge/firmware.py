"""The firmware's hot call on the Unix socket without aiohttp's server in the way.

``railcore.leanhttp`` serves the infer call itself (its module text says which requests, and hands every
other one to aiohttp's handler for good); this module answers it: the call goes through
``edge.answer.answer``, the aiohttp handler's own code, and errors map as
``railcore.web.errors_middleware`` maps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDictProxy

from edge.answer import answer
from edge.runtime import EdgeRuntime
from railcore.errors import RailgateError
from railcore.leanhttp import LeanProtocol, LeanSite
from railcore.protocol.codec import DecodeLimits
from railcore.web import Reply, error_reply

# A request on the device's socket may take this long to arrive whole before aiohttp's handler reads it.
WAIT_S = 30.0


class FirmwareProtocol(LeanProtocol):
    component = "edge runtime"

    def __init__(
        self,
        runtime: EdgeRuntime,
        limits: DecodeLimits,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[LeanProtocol],
    ) -> None:
        max_body = runtime.config.max_body_bytes
        super().__init__(fallback, connections, max_body, split_body_bytes=max_body, wait_s=WAIT_S)
        self.runtime = runtime
        self.limits = limits

    async def respond(
        self, model: str, version: str, headers: CIMultiDictProxy[str], content_type: str, body: bytes
    ) -> Reply:
        try:
            chunks, reply_headers = await answer(self.runtime, self.limits, model, version, headers, content_type, body)
        except RailgateError as exc:
            return error_reply(exc.status, exc.message, exc.headers, content_type)
        return 200, chunks, reply_headers


class FirmwareSite:
    """``railgate edge``'s Unix socket: infer calls on the lean path, any other request handed to aiohttp's
    handler of ``runner`` (set up first). ``stop`` before ``runner.cleanup()``: calls in flight finish first."""

    def __init__(self, runner: web.AppRunner, runtime: EdgeRuntime, limits: DecodeLimits, path: str) -> None:
        self.path = path
        self.site = LeanSite(runner, lambda fallback, conns: FirmwareProtocol(runtime, limits, fallback, conns))

    @property
    def connections(self) -> set[LeanProtocol]:
        return self.site.connections

    async def start(self) -> None:
        await self.site.start_unix(self.path)

    async def stop(self, timeout_s: float = 10.0) -> None:
        await self.site.close(timeout_s)
