"""Routing decisions as pure functions over backend snapshots (no I/O, no clock)."""

from __future__ import annotations

from gateway.routing.state import BackendView


def choose_backend(candidates: list[BackendView], budget_s: float) -> tuple[BackendView, str]:
    """Pick the backend for a batch; return it and a few words on why.

    Hubs are preferred: they are the utility the edge buys compute from. Among hubs, the lowest
    predicted latency (an unmeasured hub counts as fastest, so it gets measured). The gateway's own
    ``local`` backend serves when no hub can, or when no hub's prediction fits the budget and the
    local one does.
    """
    if not candidates:
        raise ValueError("no candidates")
    hubs = [c for c in candidates if c.kind == "hub"]
    local = next((c for c in candidates if c.kind == "local"), None)
    if not hubs:
        assert local is not None
        return local, "local: no healthy hub serves the model"
    best = min(hubs, key=lambda c: (c.predicted_s or 0.0, c.inflight))
    hub_misses = best.predicted_s is not None and best.predicted_s > budget_s
    local_fits = local is not None and (local.predicted_s is None or local.predicted_s <= budget_s)
    if hub_misses and local_fits:
        assert local is not None
        return local, "local: no hub fits the budget"
    return best, "lowest predicted latency" if len(hubs) > 1 else "only hub serving the model"
