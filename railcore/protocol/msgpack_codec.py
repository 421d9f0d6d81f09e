"""The msgpack body: the v2 JSON structure with tensor ``data`` as raw little-endian ``bin`` bytes."""

from __future__ import annotations

from typing import Any

import msgpack

from railcore.errors import BadRequest

CONTENT_TYPES = ("application/msgpack", "application/x-msgpack")


def is_msgpack(content_type: str | None) -> bool:
    """Whether a Content-Type header names msgpack (parameters such as ``; charset=`` are ignored)."""
    return content_type is not None and content_type.strip().lower().startswith(CONTENT_TYPES)


def loads(body: bytes | memoryview) -> Any:
    """The unpacked document. ``bin`` values come back as ``bytes`` that msgpack copies out of the body once."""
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as e:  # ExtraData, FormatError, StackError, bad UTF-8 are ValueErrors
        raise BadRequest(f"body is not valid msgpack: {e}") from None


def dumps(document: Any) -> bytes:
    """Pack ``document``; ``bytes`` and ``memoryview`` values go out as ``bin`` without an intermediate copy."""
    return msgpack.packb(document, use_bin_type=True)
