"""``GET /status``: the router's live view of every backend, as one JSON-ready dict.

A read of the router's state at ``router.clock()``; the only effect is the one reading a breaker
has anyway (an expired ejection turns half-open, as the next batch would find it).
"""

from __future__ import annotations

from typing import Any

from gateway.routing.router import Router


def render_status(router: Router, default_policy: str) -> dict[str, Any]:
    now = router.clock()
    total = sum(s.selections for s in router.state.values()) or 1
    hubs = []
    for backend in router.backends:
        state = router.state[backend.name]
        breaker = router.breakers[backend.name]
        breaker.share(now)
        models = {}
        for name, m in state.models.items():
            models[name] = {
                "latency_ms": _ms(m.total.value),
                "p95_ms": _ms(m.total.p95),
                "service_ms_by_batch": {str(b): _ms(e.value) for b, e in sorted(m.service.items())},
                "hub_queue_ms": _ms(m.hub_queue_s),
                "hub_compute_ms": _ms(m.hub_compute_s),
                "price_per_1k_now": router.price_now(backend, name),
            }
        hubs.append(
            {
                "name": backend.name,
                "kind": backend.kind,
                "region": backend.region,
                "healthy": backend.healthy,
                "breaker": breaker.state.value,
                "draining": backend.name in router.draining,
                "ejections": breaker.ejections,
                "rtt_ms": _ms(state.rtt.value),
                "inflight": backend.inflight,
                "capacity": backend.capacity,
                "price_per_1k": backend.price_per_1k,
                "carbon_g_per_kwh": backend.carbon_g_per_kwh,
                "batches": state.selections,
                "traffic_share": round(state.selections / total, 4),
                "rows_served": state.rows_served,
                "error_rate": round(state.recent_errors, 4),
                "pending_requests": state.pending_requests,
                "models": models,
            }
        )
    return {"default_policy": default_policy, "hubs": hubs, "recent_decisions": list(router.recent)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
