"""The circuit breaker for the link to the gateway: the core ``railcore.breaker.Breaker`` with a clock.

The state machine is the gateway's own (consecutive failures open the circuit; after a back-off one
trial call goes through; its success closes the circuit and resets the back-off, its failure opens
it for twice as long, capped). This shell adds what the device needs: a clock, and the answer in
the offload decision's terms (``Link``). No slow start: a device has one gateway and nothing to
share it with. A trial that never reports (its caller vanished, or its thread gave up on it) does
not wedge the circuit: after another back-off a new trial is allowed. The caller serialises access
(the runtime holds a lock around it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge.offload import Link
from railcore.breaker import Breaker, BreakerPolicy, BreakerState, Ticket
from railcore.errors import Cause

CircuitState = BreakerState  # CLOSED, HALF_OPEN, OPEN


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.breaker = Breaker(BreakerPolicy(failure_threshold, backoff_s, max_backoff_s, slow_start_s=0.0))

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    @property
    def opened(self) -> int:
        """Times the circuit opened (for logs and tests)."""
        return self.breaker.ejections

    @property
    def backoff_s(self) -> float:
        """The current back-off: how long the circuit stays open after its last opening."""
        return self.breaker.backoff_s

    def retry_in_s(self) -> float:
        """Seconds until a call may next go up (0 when one may go now)."""
        return max(self.breaker.retry_at() - self.clock(), 0.0)

    def peek(self) -> Link:
        """What a call would get now, without claiming anything."""
        state = self.breaker.state_at(self.clock())
        if state is BreakerState.CLOSED:
            return Link.UP
        return Link.TRIAL if state is BreakerState.HALF_OPEN and not self.breaker.trial_in_flight else Link.DOWN

    def admit(self) -> Ticket | None:
        """Claim the right to call the gateway now: a ticket to settle the call with, or None. In
        OPEN/HALF_OPEN, at most one caller per back-off wins."""
        return self.breaker.admit(self.clock())

    def record_success(self, ticket: Ticket | None = None) -> None:
        self.breaker.on_success(self.clock(), ticket)

    def record_failure(self, ticket: Ticket | None = None, cause: Cause = Cause.ERROR) -> None:
        """A failed call; one sent before the circuit last opened changes nothing but the counts."""
        self.breaker.on_failure(self.clock(), ticket, cause)

    def release(self, ticket: Ticket | None, cause: Cause | None = None) -> None:
        """A call that says nothing of the gateway's health (refused as this device's or request's
        fault, or never sent): its trial slot, if it held it, is free again."""
        self.breaker.release(ticket, cause)
