"""The one place errors become replies: ``{"error": "..."}`` (msgpack for msgpack clients) with the
error's own status, for the gateway and the edge runtime alike."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from railcore.errors import RailgateError
from railcore.protocol.codec import encode_error
from railcore.protocol.msgpack_codec import is_msgpack
from railcore.protocol.types import Encoding

log = logging.getLogger("railgate.http")

Chunks = list[bytes | memoryview]
Reply = tuple[int, Chunks, dict[str, str]]  # status, body chunks, headers


def error_reply(status: int, message: str, headers: dict[str, str], content_type: str) -> Reply:
    """``{"error": message}`` in the caller's encoding (msgpack for msgpack clients): the reply of every
    front, aiohttp's (``error_response``) and railcore/leanhttp.py's."""
    encoding = Encoding.MSGPACK if is_msgpack(content_type) else Encoding.JSON
    body, body_type = encode_error(message, encoding)
    return status, [body], {**headers, "Content-Type": body_type}


def error_response(request: web.Request, status: int, message: str, headers: dict[str, str]) -> web.Response:
    status, chunks, reply_headers = error_reply(status, message, headers, request.content_type)
    return web.Response(status=status, body=chunks[0], headers=reply_headers)


def errors_middleware(component: str, on_error: Callable[[web.Request, RailgateError], None] | None = None):
    """A middleware mapping every error to its reply; ``on_error`` sees each RailgateError (metrics)."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RailgateError as exc:
            if on_error is not None:
                on_error(request, exc)
            return error_response(request, exc.status, exc.message, exc.headers)
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(request, 413, f"body is larger than the limit: {exc.text}", {})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
            return error_response(request, exc.status, exc.reason or exc.text or "error", kept)
        except Exception:
            log.exception("event=unhandled component=%s path=%s", component, request.path)
            return error_response(request, 500, f"internal error in the {component}", {})

    return middleware
