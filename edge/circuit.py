"""The circuit breaker for the link to the gateway. Pure: a clock is injected, no I/O, no threads.

    CLOSED --(failure_threshold consecutive failures)--> OPEN --(back-off over: one trial)--> HALF_OPEN
    HALF_OPEN --(trial succeeds)--> CLOSED        HALF_OPEN --(trial fails)--> OPEN, back-off doubled (capped)

Any success closes the circuit and resets the back-off. A trial that never reports (its caller
vanished) does not wedge the breaker: after another back-off a new trial is allowed. The caller
serialises access (the runtime holds a lock around it).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from edge.offload import Link


class CircuitState(enum.Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive
        self.backoff_s = backoff_s
        self.retry_at = 0.0  # OPEN: when a trial may go; HALF_OPEN: when the trial is presumed lost
        self.opened = 0  # times the circuit opened (for logs and tests)

    def peek(self) -> Link:
        """What a call would get now, without claiming anything."""
        if self.state is CircuitState.CLOSED:
            return Link.UP
        return Link.TRIAL if self.clock() >= self.retry_at else Link.DOWN

    def admit(self) -> bool:
        """Claim the right to call the gateway now. In OPEN/HALF_OPEN, at most one caller per back-off wins."""
        if self.state is CircuitState.CLOSED:
            return True
        now = self.clock()
        if now < self.retry_at:
            return False
        self.state = CircuitState.HALF_OPEN
        self.retry_at = now + self.backoff_s
        return True

    def record_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.backoff_s = self.base_backoff_s

    def record_failure(self) -> None:
        now = self.clock()
        if self.state is CircuitState.HALF_OPEN:
            self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)
            self._open(now)
        elif self.state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._open(now)
        # OPEN: a late failure of a call admitted before the circuit opened changes nothing.

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.retry_at = now + self.backoff_s
        self.opened += 1
