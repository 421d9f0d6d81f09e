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


def error_response(request: web.Request, status: int, message: str, headers: dict[str, str]) -> web.Response:
    encoding = Encoding.MSGPACK if is_msgpack(request.content_type) else Encoding.JSON
    body, content_type = encode_error(message, encoding)
    return web.Response(status=status, body=body, headers={**headers, "Content-Type": content_type})


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
