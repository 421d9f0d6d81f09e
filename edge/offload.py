"""The offload decision: run a call on the device or send it up to the gateway. Pure, no I/O.

``decide`` takes what the runtime knows at the moment of a call (the predicted local and remote
latencies, the budget, the gateway link's state, the policy and the ``prefer_local`` weight) and
returns a ``Decision``: where the call goes and why. The reason is a small closed vocabulary, so it
can label a Prometheus counter and travel in the ``X-Offload-Reason`` reply header.

``auto`` (the default policy), in order:
  * model not on the device       -> remote (``not_local``), or nowhere (``unavailable``) when the link is
                                      down or the policy is ``local``
  * no gateway configured          -> local (``no_gateway``)
  * circuit open                   -> local (``circuit_open``)
  * back-off over, trial allowed   -> remote (``circuit_trial``): the call that tells whether the backbone is back
  * remote never/long not measured -> remote (``remote_unmeasured``), unless the known RTT alone misses the budget
  * remote fits the budget         -> remote (``remote_fits``), unless local fits and
                                      local_ms <= prefer_local * remote_ms (``prefer_local``)
  * remote misses the budget       -> local (``remote_over_budget``), unless local misses it too and
                                      remote is predicted faster (``remote_faster``)
A remote call is cut early enough for local to still fit (see ``EdgeRuntime``); when it fails the
call runs locally, reported as ``remote_failed`` or ``remote_timeout``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Link(enum.Enum):
    """The gateway as the decision sees it (from the circuit breaker)."""

    UP = "up"  # circuit closed: calls go through
    TRIAL = "trial"  # half-open: one trial call may go through now
    DOWN = "down"  # circuit open: no call goes up
    NONE = "none"  # no gateway configured


class OffloadPolicy(enum.StrEnum):
    """Which way a call may go (``policy`` in the config, per call, ``X-Offload-Policy``)."""

    AUTO = "auto"  # the decision below
    LOCAL = "local"  # never offload
    REMOTE = "remote"  # offload whenever the circuit lets a call through


class OffloadTarget(enum.StrEnum):
    """Where a call runs (the ``path`` label of the edge's metrics)."""

    LOCAL = "local"  # on the device
    REMOTE = "remote"  # up to the gateway
    NONE = "none"  # nowhere can run it: the caller gets ModelUnavailable


@dataclass(frozen=True, slots=True)
class Decision:
    where: OffloadTarget
    reason: str


# Every reason a decision (or a fallback after a failed remote call) can carry, for metrics and docs.
REASONS = (
    "policy_local",
    "policy_remote",
    "not_local",
    "unavailable",
    "no_gateway",
    "circuit_open",
    "circuit_trial",
    "remote_unmeasured",
    "remote_fits",
    "prefer_local",
    "remote_over_budget",
    "remote_faster",
    "remote_failed",
    "remote_timeout",
)

LOCAL, REMOTE, NONE = OffloadTarget.LOCAL, OffloadTarget.REMOTE, OffloadTarget.NONE
# Decisions are immutable and few: each one is built once, not per call.
_WHERE = {
    "policy_local": LOCAL, "policy_remote": REMOTE, "not_local": REMOTE, "unavailable": NONE, "no_gateway": LOCAL,
    "circuit_open": LOCAL, "circuit_trial": REMOTE, "remote_unmeasured": REMOTE, "remote_fits": REMOTE,
    "prefer_local": LOCAL, "remote_over_budget": LOCAL, "remote_faster": REMOTE,
}  # fmt: skip
_DECISIONS = {reason: Decision(where, reason) for reason, where in _WHERE.items()}


def decide(
    *,
    policy: str,
    budget_ms: float,
    local_ms: float | None,
    remote_ms: float | None,
    rtt_ms: float | None,
    link: Link,
    prefer_local: float = 0.0,
) -> Decision:
    """Where one call runs.

    ``local_ms`` None: the model cannot run on the device (not there, or refused). ``remote_ms`` None: no
    fresh estimate of the whole remote path for this model; ``rtt_ms`` is the gateway's round trip alone
    (from probes), None when never measured.
    """
    reachable = link in (Link.UP, Link.TRIAL)
    if local_ms is None:
        if reachable and policy != OffloadPolicy.LOCAL:
            return _DECISIONS["not_local"]
        return _DECISIONS["unavailable"]
    if policy == OffloadPolicy.LOCAL:
        return _DECISIONS["policy_local"]
    if link is Link.NONE:
        return _DECISIONS["no_gateway"]
    if link is Link.DOWN:
        return _DECISIONS["circuit_open"]
    if policy == OffloadPolicy.REMOTE:
        return _DECISIONS["policy_remote"]
    if link is Link.TRIAL:
        return _DECISIONS["circuit_trial"]
    if remote_ms is None:
        if rtt_ms is not None and rtt_ms > budget_ms:
            return _DECISIONS["remote_over_budget"]
        return _DECISIONS["remote_unmeasured"]
    if remote_ms <= budget_ms:
        if local_ms <= budget_ms and local_ms <= prefer_local * remote_ms:
            return _DECISIONS["prefer_local"]
        return _DECISIONS["remote_fits"]
    if local_ms > budget_ms and remote_ms < local_ms:
        return _DECISIONS["remote_faster"]
    return _DECISIONS["remote_over_budget"]
