"""The msgpack body: the v2 JSON structure with tensor ``data`` as raw little-endian ``bin`` bytes."""

from __future__ import annotations

from typing import Any

import msgpack

from railcore.errors import BadRequest, PayloadTooLarge

CONTENT_TYPES = ("application/msgpack", "application/x-msgpack")


# The answer for the media types the fronts hand over (already stripped and lower-cased), without the
# string work each call of the general rule below does (twice per request).
_KNOWN = {
    "application/msgpack": True,
    "application/x-msgpack": True,
    "application/octet-stream": False,
    "application/json": False,
}


def is_msgpack(content_type: str | None) -> bool:
    """Whether a Content-Type header names msgpack (parameters such as ``; charset=`` are ignored)."""
    if content_type is None:
        return False
    known = _KNOWN.get(content_type)
    if known is not None:
        return known
    return content_type.strip().lower().startswith(CONTENT_TYPES)


def loads(body: bytes | memoryview, max_items: int | None = None) -> Any:
    """The unpacked document. ``bin`` values come back as ``bytes`` that msgpack copies out of the body once.

    With ``max_items``, arrays and maps may hold that many entries in all (tensor data is ``bin``, so a
    request's structure is small): one byte of msgpack can be an empty array of 56 bytes, and the count
    stops a body of them as it is unpacked, not after.
    """
    if max_items is None:
        hooks: dict[str, Any] = {}
    elif 2 * len(body) <= max_items:
        # The count cannot pass the limit: every value takes a byte at least, and the count is at most two per
        # value (once as an entry of its container, once as a container itself). No hook to call per container.
        hooks = {"max_array_len": max_items, "max_map_len": max_items}
    else:
        left = max_items

        def counted(container: Any) -> Any:
            nonlocal left
            left -= len(container) + 1
            if left < 0:
                raise PayloadTooLarge(f"msgpack body holds more than {max_items} array and map entries")
            return container

        # Each array or map arrives here as it is finished; none may be longer than the total either.
        hooks = {"list_hook": counted, "object_hook": counted, "max_array_len": max_items, "max_map_len": max_items}
    try:
        return msgpack.unpackb(body, raw=False, **hooks)
    except (ValueError, msgpack.UnpackException) as e:  # ExtraData, FormatError, StackError, bad UTF-8 are ValueErrors
        raise BadRequest(f"body is not valid msgpack: {e}") from None


def dumps(document: Any) -> bytes:
    """Pack ``document``; ``bytes`` and ``memoryview`` values go out as ``bin`` without an intermediate copy."""
    return msgpack.packb(document, use_bin_type=True)
