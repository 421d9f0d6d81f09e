"""Swapping the hub table without dropping a request: a pure plan, applied by a thin shell.

``plan_reload(old, new)`` compares two hub tables and says, per hub, what must happen:

    added     a new name: started, probed (warmed up) and added
    removed   a name no longer listed: drained (no new batches), closed once its batches finish
    updated   same address and protocol, other fields changed: price, tariff, region, carbon and
              capacity applied in place; its connections and live state stay
    replaced  same name, new address or protocol: the old one is retired as if removed, a new one
              started as if added

``apply_reload`` carries a plan out on a running gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.backends import Backend
from gateway.config import HubSpec

if TYPE_CHECKING:
    from gateway.gateway import Gateway


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does to each hub whose entry changed (each tuple in its file's order)."""

    added: tuple[HubSpec, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[HubSpec, ...] = ()
    replaced: tuple[HubSpec, ...] = ()
    started: tuple[HubSpec, ...] = ()  # added and replaced together, in the new file's order

    def changes(self) -> dict[str, list[str]]:
        """The reply to ``POST /admin/reload``: a replaced hub counts as removed and added."""
        return {
            "added": [spec.name for spec in self.started],
            "removed": [spec.name for spec in self.replaced] + list(self.removed),
            "updated": [spec.name for spec in self.updated],
        }


def plan_reload(old: Sequence[HubSpec], new: Sequence[HubSpec]) -> ReloadPlan:
    """The plan that turns hub table ``old`` into ``new``; unchanged hubs are left alone."""
    before = {spec.name: spec for spec in old}
    names = {spec.name for spec in new}
    added, updated, replaced, started = [], [], [], []
    for spec in new:
        previous = before.get(spec.name)
        if previous == spec:
            continue
        if previous is None:
            added.append(spec)
        elif (previous.url, previous.protocol) == (spec.url, spec.protocol):
            updated.append(spec)
            continue
        else:
            replaced.append(spec)
        started.append(spec)
    removed = tuple(spec.name for spec in old if spec.name not in names)
    return ReloadPlan(tuple(added), removed, tuple(updated), tuple(replaced), tuple(started))


async def apply_reload(plan: ReloadPlan, gateway: Gateway) -> None:
    """Retire, update and start hubs as ``plan`` says."""
    for spec in plan.replaced:
        gateway.retire(spec.name)
    for name in plan.removed:
        gateway.retire(name)
    for spec in plan.updated:
        backend = gateway.router.backend(spec.name)
        assert backend is not None, f"hub {spec.name} is in the old table but not in the router"
        apply_spec(backend, spec)
    for spec in plan.started:
        await gateway.add_hub(spec)


def apply_spec(backend: Backend, spec: HubSpec) -> None:
    """The fields of ``spec`` a running hub takes without reconnecting."""
    backend.spec = spec  # type: ignore[attr-defined]
    backend.region = spec.region
    backend.price_per_1k = spec.price_per_1k
    backend.carbon_g_per_kwh = spec.carbon_g_per_kwh
    backend.capacity = spec.max_inflight
