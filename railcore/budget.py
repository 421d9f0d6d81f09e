"""The latency budget a call asks for: pure parsing shared by every front of the gateway and the edge."""

from __future__ import annotations

import math
from typing import Any

from railcore.errors import BadRequest

BUDGET_HEADER = "X-Latency-Budget-Ms"


def requested_budget_ms(header: str | None, timeout_us: Any, cap_ms: float) -> float | None:
    """The tighter of ``X-Latency-Budget-Ms`` (ms) and the v2 ``timeout`` parameter (us), in ms, at most
    ``cap_ms``; None when the call names neither (the caller's default applies). Bad values are a
    BadRequest naming them: NaN, infinities, negatives, booleans, non-numbers."""
    budget: float | None = None
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise BadRequest(f"{BUDGET_HEADER} must be a non-negative number of milliseconds, got {header!r}")
        budget = value
    if timeout_us is not None:
        number = isinstance(timeout_us, int | float) and not isinstance(timeout_us, bool)
        if not number or (isinstance(timeout_us, float) and math.isnan(timeout_us)) or timeout_us < 0:
            shown = repr(timeout_us)[:40]
            raise BadRequest(f"parameter 'timeout' must be a non-negative number of microseconds, got {shown}")
        # Capped before dividing: a 400-digit integer is a valid JSON number but no float.
        timeout_ms = min(timeout_us, cap_ms * 1000) / 1000
        budget = timeout_ms if budget is None else min(budget, timeout_ms)
    return None if budget is None else min(budget, cap_ms)
