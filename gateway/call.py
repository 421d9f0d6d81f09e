"""What a front extracted from one inference call, and the pure parsing of each value.

A front (HTTP, gRPC, ...) copies the caller's metadata into a ``Call`` as sent: the values stay
strings, because *when* each one is checked is part of the contract. The inference service parses
them at their own step of admission (the key before the model, the route before the body, the
budget after it), so an unauthenticated caller learns nothing about its headers and every front
refuses the same request with the same error. The parsers below are pure functions of a string and
the config, testable without a server; ``call_from_metadata`` reads any case-insensitive mapping
(aiohttp's headers) or one whose keys are already lower-case (gRPC metadata).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import PRIORITIES, Deadlines, Priority
from gateway.routing.policy import POLICIES, Policy
from railcore.budget import requested_budget_ms
from railcore.errors import BadRequest

# The metadata keys, lower-case as gRPC requires; HTTP headers match them case-insensitively.
AUTHORIZATION = "authorization"
LATENCY_BUDGET = "x-latency-budget-ms"
ROUTE_POLICY = "x-route-policy"
ALLOWED_REGIONS = "x-allowed-regions"
PRIORITY = "x-priority"

# One region name in X-Allowed-Regions (gateway/openapi.py documents the same pattern).
REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# By value, for one dict lookup per call instead of a scan and an Enum() call.
_POLICY = {str(p): p for p in POLICIES}
_PRIORITY = {str(p): p for p in PRIORITIES}


def _never_gone() -> bool:
    return False


# How far behind the monotonic clock an event loop's clock may read and still be taken for it.
_LOOP_CLOCK_STEP_S = 0.005


def arrival(loop: asyncio.AbstractEventLoop) -> float:
    """Now, on the loop's clock (deadlines and their timers run on it), for a call's ``arrived``.

    uvloop's clock is a coarse copy of the monotonic one: it moves in 1 ms steps, up to one step
    behind, so a deadline counted from it came up to 1 ms early (a 504 at 4.4 ms of a 5 ms budget, by
    the gateway's own X-Gateway-Ms). Where the loop's clock is the monotonic one within such a step
    (asyncio's own, uvloop's), the monotonic clock is read; any other clock (a virtual one) is the loop's.
    """
    loop_now = loop.time()
    now = time.monotonic()
    return now if 0.0 <= now - loop_now < _LOOP_CLOCK_STEP_S else loop_now


@dataclass(slots=True)  # one per call, never changed; not frozen, whose __init__ costs ~4x per field
class Call:
    """One inference call's metadata, as the caller sent it (None: not sent)."""

    arrived: float  # event-loop time the call arrived (``arrival``); the latency budget counts from here
    gone: Callable[[], bool] = _never_gone  # whether the caller went away (its batch then skips it)
    authorization: str | None = None
    budget_ms: str | None = None
    policy: str | None = None
    regions: str | None = None
    priority: str | None = None
    body_bytes: int | None = None  # the size the caller declared before sending the body, if any
    trace: object | None = None  # trace context, opaque to the service
    transport_budget_s: float | None = None  # a deadline the transport carries (gRPC's); the tighter wins


def call_from_metadata(
    metadata: Mapping[str, str],
    *,
    arrived: float,
    gone: Callable[[], bool] = _never_gone,
    body_bytes: int | None = None,
    trace: object | None = None,
    transport_budget_s: float | None = None,
) -> Call:
    """A ``Call`` from HTTP headers or gRPC metadata (the keys above, case-insensitive for HTTP)."""
    get = metadata.get
    return Call(
        arrived,
        gone,
        get(AUTHORIZATION),
        get(LATENCY_BUDGET),
        get(ROUTE_POLICY),
        get(ALLOWED_REGIONS),
        get(PRIORITY),
        body_bytes,
        trace,
        transport_budget_s,
    )


def budget_s(header: str | None, timeout_us: Any, deadlines: Deadlines) -> float:
    """The call's latency budget in seconds: the tighter of the header (ms) and the v2 ``timeout``
    parameter (us), capped at ``deadlines.max_budget_ms``; the default budget when neither is sent."""
    asked = requested_budget_ms(header, timeout_us, deadlines.max_budget_ms)
    budget = deadlines.default_budget_ms if asked is None else asked
    return min(budget, deadlines.max_budget_ms) / 1000


def route_policy(header: str | None, default: str) -> Policy:
    """The routing policy the call asks for (``X-Route-Policy``), else ``default``."""
    text = (default if header is None else header).strip()
    policy = _POLICY.get(text)
    if policy is None:
        raise BadRequest(f"X-Route-Policy {text!r} is not a policy; valid: {', '.join(POLICIES)}")
    return policy


def allowed_regions(header: str | None) -> frozenset[str] | None:
    """The regions the call allows (``X-Allowed-Regions``, comma-separated); None: any."""
    if header is None:
        return None
    asked = [r.strip() for r in header.split(",")]
    bad = [r for r in asked if not REGION.match(r)]
    if bad:
        raise BadRequest(
            f"X-Allowed-Regions must be a comma-separated list of region names, got {header!r} (bad: {bad[0]!r})"
        )
    return frozenset(asked)


def require_known_regions(regions: frozenset[str] | None, known: frozenset[str]) -> None:
    """Refuse a region no backend is in (``known``): the allowed set is part of the batch key, so a
    client free to name any region could make lanes at will, and could never be served anyway."""
    if regions is not None and not regions <= known:
        unknown = ", ".join(sorted(regions - known))[:200]
        raise BadRequest(
            f"X-Allowed-Regions names unknown region(s) {unknown}; this gateway's regions are "
            f"{', '.join(sorted(known)) or 'none'}"
        )


def priority(header: str | None, default: str) -> Priority:
    """The call's admission priority (``X-Priority``), else ``default`` (the tenant's)."""
    text = (default if header is None else header).strip().lower()
    value = _PRIORITY.get(text)
    if value is None:
        raise BadRequest(f"X-Priority {text!r} is not a priority; valid: {', '.join(PRIORITIES)}")
    return value
