"""Closed-loop JSON traffic for the demo, every request tallied: answered (status, X-Served-By) or lost.

``burst`` runs ``concurrency`` clients until ``count`` requests are sent or ``seconds`` pass; the
``Tally`` it returns counts routes per backend (optionally by when they were sent), errors by
status, lost requests (no HTTP answer within the budget and a margin) and latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Reply:
    """One request: when it was sent and answered, its status, and the backend that served it."""

    sent_at: float
    answered_at: float
    status: int  # 0: no HTTP answer at all (lost)
    served_by: str
    detail: str = ""
    reason: str = ""  # X-Route-Reason


@dataclass(slots=True)
class Tally:
    """Every request of a burst, as answered (or not)."""

    replies: list[Reply] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.replies)

    @property
    def answered(self) -> int:
        return sum(1 for r in self.replies if r.status == 200)

    @property
    def lost(self) -> int:
        return sum(1 for r in self.replies if r.status == 0)

    def errors(self) -> dict[str, int]:
        return dict(Counter(str(r.status) for r in self.replies if r.status not in (0, 200)))

    def routes(self, since: float | None = None, until: float | None = None) -> dict[str, int]:
        """Answered requests per backend (X-Served-By), of those sent within [since, until)."""
        return dict(
            Counter(
                r.served_by
                for r in self.replies
                if r.status == 200 and (since is None or r.sent_at >= since) and (until is None or r.sent_at < until)
            ).most_common()
        )

    def p50_p99_ms(self) -> tuple[float, float]:
        ms = [1000 * (r.answered_at - r.sent_at) for r in self.replies if r.status == 200]
        if not ms:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(ms, [50, 99])
        return float(p50), float(p99)


def json_body(x: np.ndarray, i: int) -> bytes:
    """A v2 JSON infer body for the digits model: row ``i`` of ``x`` (wrapping)."""
    row = x[i % len(x)].ravel().tolist()
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": row}]}).encode()


async def burst(
    session: Any,
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    *,
    concurrency: int,
    count: int | None = None,
    seconds: float | None = None,
    budget_ms: float = 2000.0,
) -> Tally:
    """Closed-loop clients posting JSON infers to ``url`` until ``count`` are sent or ``seconds`` pass.

    Every request ends up in the tally: answered (with its status and X-Served-By) or lost (no HTTP
    answer within its budget and a margin).
    """
    import aiohttp

    tally = Tally()
    end = None if seconds is None else time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=budget_ms / 1000 + 5)
    sent = 0
    hdrs = {**headers, "Content-Type": "application/json", "X-Latency-Budget-Ms": f"{budget_ms:g}"}

    async def client() -> None:
        nonlocal sent
        while (count is None or sent < count) and (end is None or time.monotonic() < end):
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.monotonic()
            try:
                async with session.post(url, data=body, headers=hdrs, timeout=timeout) as reply:
                    text = await reply.read()
                    status, served = reply.status, reply.headers.get("X-Served-By", "?")
                    reason = reply.headers.get("X-Route-Reason", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.replies.append(Reply(t0, time.monotonic(), 0, "-", repr(exc)))
                continue
            detail = "" if status == 200 else text[:120].decode(errors="replace")
            tally.replies.append(Reply(t0, time.monotonic(), status, served, detail, reason))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally
