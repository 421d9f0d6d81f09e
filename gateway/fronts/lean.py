"""The gateway's infer call on its HTTP port without aiohttp's server in the way (``railcore.leanhttp``).

Serves the requests ``railcore.leanhttp`` takes (an HTTP/1.1 infer POST whose body arrives whole within
the limits; every other request, and the rest of its connection, goes to aiohttp's handler of the same
app), with what aiohttp's path applies to them: the inference family's access level
(fronts/access.py), the body limits and reading budget (fronts/body.py, via ``held_body``), the same
``serve_infer`` (admission, decode, the inference service, encode), failures counted and answered as the
errors middleware does, and ``Connection: close`` on every reply once the gateway drains. Off
(``listen.lean_http: false``) and with tracing on (its spans wrap aiohttp's handler), every request
takes aiohttp's path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.call import arrival, call_from_metadata
from gateway.config import Access
from gateway.fronts.access import check_access
from gateway.fronts.body import held_body
from gateway.fronts.http import GATEWAY, INFER_FRONT, InferFront, serve_infer
from gateway.gateway import Gateway
from railcore.errors import RailgateError
from railcore.leanhttp import LeanProtocol, LeanSite
from railcore.web import Reply, error_reply

# The largest body waited for when it does not arrive with its head: larger ones are read by aiohttp's
# path, which charges the reading budget before the first byte (here a body is charged once it is whole).
SPLIT_BODY_BYTES = 1 << 16


class InferProtocol(LeanProtocol):
    component = "gateway"

    def __init__(
        self,
        gateway: Gateway,
        front: InferFront,
        level: Access,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[LeanProtocol],
    ) -> None:
        limits = front.body_limits
        super().__init__(
            fallback, connections, limits.max_body_bytes, split_body_bytes=SPLIT_BODY_BYTES, wait_s=limits.timeout_s
        )
        self.gateway = gateway
        self.front = front
        self.level = level

    def closing(self) -> bool:
        return self.gateway.draining  # clients stop reusing connections before the listener goes

    async def respond(
        self, model: str, version: str, headers: CIMultiDictProxy[str], content_type: str, body: bytes
    ) -> Reply:
        front = self.front
        try:
            check_access(self.level, self.gateway.tenants, headers.get("Authorization"), model)
            started = time.perf_counter()  # the gateway's own time for the call, reported as X-Gateway-Ms
            call = call_from_metadata(
                headers, arrived=arrival(self.loop), gone=self.gone, body_bytes=len(body), trace=None
            )
            chunks, reply_headers = await serve_infer(
                front,
                call,
                model,
                version,
                headers,
                content_type,
                lambda length: held_body(body, content_type, front.body_limits, front.reading, length),
                started,
            )
        except RailgateError as exc:
            front.service.record_failure(model, exc)
            return error_reply(exc.status, exc.message, exc.headers, content_type)
        return 200, chunks, reply_headers


def lean_site(runner: web.AppRunner, app: web.Application) -> LeanSite:
    """The public port's site: infer calls on the lean path, everything else on ``runner``'s aiohttp handler."""
    gateway, front = app[GATEWAY], app[INFER_FRONT]
    level = Access(gateway.config.access.inference)
    return LeanSite(runner, lambda fallback, conns: InferProtocol(gateway, front, level, fallback, conns))
