"""Hub health: passive outlier ejection and a circuit breaker, pure, with time passed in.

Each hub has one ``Breaker``. Calls report success or failure; consecutive failures (errors or
timeouts) eject the hub for a back-off that doubles on each ejection in a row (capped). When the
back-off ends the breaker is half-open: one trial batch at a time goes through; a success closes
it, a failure ejects it again for twice as long. A closed breaker that has just come back gets a
slow start: it is offered a growing share of batches over ``slow_start_s``, so a recovering hub is
not flooded by a herd (Envoy's slow start mode).

Active probes (``/v2/health/ready`` on a period) live in the service shell; a failed probe marks the
hub down at once and a passing one brings it up, still through the breaker's slow start.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures_to_eject: int = 3
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    slow_start_s: float = 5.0


@dataclass(slots=True)
class Breaker:
    policy: BreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    ejections_in_a_row: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False
    closed_at: float = float("-inf")  # when it last closed (for slow start)
    ejections: int = 0  # total, for metrics

    def share(self, now: float) -> float:
        """Fraction of batches this hub should be offered now: 0 when ejected, ramps after return."""
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return 0.0
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            return 0.0 if self.trial_in_flight else 1.0
        if self.policy.slow_start_s <= 0:
            return 1.0
        return min(1.0, max(0.1, (now - self.closed_at) / self.policy.slow_start_s))

    def on_send(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.trial_in_flight = True

    def on_success(self, now: float) -> bool:
        """Record a good call; True when this closed an open or half-open breaker."""
        self.consecutive_failures = 0
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.trial_in_flight = False
            self.ejections_in_a_row = 0
            self.closed_at = now
            return True
        self.ejections_in_a_row = 0
        return False

    def on_failure(self, now: float) -> bool:
        """Record a failed call or timeout; True when this ejected the hub."""
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.policy.failures_to_eject:
            self.eject(now)
            return True
        return False

    def eject(self, now: float) -> None:
        backoff = self.policy.base_ejection_s * (2**self.ejections_in_a_row)
        self.open_until = now + min(backoff, self.policy.max_ejection_s)
        self.ejections_in_a_row += 1
        self.ejections += 1
        self.state = BreakerState.OPEN
        self.trial_in_flight = False
        self.consecutive_failures = 0
