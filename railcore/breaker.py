"""The circuit breaker for one backend (a hub, or the edge's gateway): pure, with time passed in.

    CLOSED --(failures_to_eject consecutive failures)--> OPEN --(back-off over)--> HALF_OPEN
    HALF_OPEN --(the trial succeeds)--> CLOSED, slow start      (any success closes, from any state)
    HALF_OPEN --(the trial fails)--> OPEN for twice as long, capped at max_ejection_s
    HALF_OPEN --(the trial is released, or not heard of by its timeout)--> HALF_OPEN, a new trial may go

Calls are sent with a ``Ticket`` (``admit``, or ``on_send`` once the router has chosen) and settled
with it: ``on_success``, ``on_failure`` or ``release``. The ticket carries the ejection epoch it was
sent in, so a failure of a call sent before the current ejection (a batch already on its way to a
dead hub) is counted but does not eject again or lengthen the back-off. In half-open one trial goes
at a time, and a trial always resolves: a trial that ends saying nothing about the hub (cancelled as
a hedge loser, answered 4xx, cut by its own budget before the hub's p95) is ``release``d, and one
that never reports at all (its caller vanished) frees the slot after ``trial_timeout_s`` (by default
the back-off that preceded it). The exponent of the back-off is capped, so it never overflows.

A closed breaker that has just come back gets a slow start: it is offered a growing share of
batches over ``slow_start_s``, so a recovering hub is not flooded by a herd (Envoy's slow start).
Failures are counted by ``Cause`` for metrics and /status. Active probes live in the shells.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from railcore.errors import Cause

# 2**64 times any sane base is past any sane cap: doubling further changes nothing, and an
# uncapped ``2**n`` raised OverflowError in a long simulation.
_MAX_DOUBLINGS = 64


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> int:
        """The state as a Prometheus gauge value: 0 closed, 1 half-open, 2 open."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures_to_eject: int = 3
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    slow_start_s: float = 5.0
    trial_timeout_s: float | None = None  # None: the back-off that preceded the trial

    def ejection_s(self, in_a_row: int) -> float:
        """How long the ejection after ``in_a_row`` earlier ejections lasts: doubling, capped."""
        return min(self.base_ejection_s * 2.0 ** min(in_a_row, _MAX_DOUBLINGS), self.max_ejection_s)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call's pass through the breaker: the ejection epoch it was sent in, and its trial number
    (0: not a half-open trial)."""

    epoch: int
    trial: int = 0


@dataclass(slots=True)
class Breaker:
    policy: BreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    ejections_in_a_row: int = 0
    open_until: float = 0.0
    backoff_s: float = 0.0  # the last ejection's length
    closed_at: float = float("-inf")  # when it last closed (for slow start)
    ejections: int = 0  # total: also the epoch a ticket is sent in
    failures_by_cause: dict[Cause, int] = field(default_factory=dict)  # for metrics and /status
    _trial: int = 0  # the trial in flight (0: none)
    _trials: int = 0  # trials started, for their numbers
    _trial_expires: float = 0.0
    _closed_ticket: Ticket = field(default_factory=lambda: Ticket(0))  # shared: no allocation per call

    # -- views -----------------------------------------------------------------------------------

    def state_at(self, now: float) -> BreakerState:
        """The state at ``now``: an ejection whose back-off is over turns half-open, and a trial not
        heard of by its timeout is given up (its slot freed)."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
        if self._trial and now >= self._trial_expires:
            self._trial = 0
        return self.state

    @property
    def trial_in_flight(self) -> bool:
        return self._trial != 0

    def share(self, now: float) -> float:
        """Fraction of batches this hub should be offered now: 0 when ejected or while its trial is
        out, ramping up after it returns."""
        state = self.state_at(now)
        if state is BreakerState.OPEN:
            return 0.0
        if state is BreakerState.HALF_OPEN:
            return 0.0 if self._trial else 1.0
        if self.policy.slow_start_s <= 0:
            return 1.0
        return min(1.0, max(0.1, (now - self.closed_at) / self.policy.slow_start_s))

    def retry_at(self) -> float:
        """When a call may next go (OPEN: the back-off's end; a trial out: its timeout); 0 if now."""
        if self.state is BreakerState.OPEN:
            return self.open_until
        return self._trial_expires if self._trial else 0.0

    # -- sending ---------------------------------------------------------------------------------

    def admit(self, now: float) -> Ticket | None:
        """Claim the right to send a call now: any call when closed, the single trial in half-open,
        None while open or while the trial is out."""
        state = self.state_at(now)
        if state is BreakerState.CLOSED:
            return self._closed_ticket
        if state is BreakerState.OPEN or self._trial:
            return None
        self._trials += 1
        self._trial = self._trials
        timeout = self.policy.trial_timeout_s
        self._trial_expires = now + (self.backoff_s if timeout is None else timeout)
        return Ticket(self.ejections, self._trial)

    def on_send(self, now: float) -> Ticket:
        """The router chose this backend (it checked ``share`` first): the call's ticket."""
        return self.admit(now) or Ticket(self.ejections)

    # -- outcomes --------------------------------------------------------------------------------

    def on_success(self, now: float, ticket: Ticket | None = None) -> bool:
        """Record a good call; True when this closed an open or half-open breaker. Whenever its
        call was sent (``ticket``), an answer shows the hub serving now: any success closes."""
        self.consecutive_failures = 0
        self.ejections_in_a_row = 0
        if self.state is BreakerState.CLOSED:
            return False
        self.state = BreakerState.CLOSED
        self._trial = 0
        self.closed_at = now
        return True

    def on_failure(self, now: float, ticket: Ticket | None = None, cause: Cause = Cause.ERROR) -> bool:
        """Record a failed call or timeout; True when this ejected the hub.

        A call sent before the current ejection, or a failure while the back-off runs, is counted
        by cause but changes nothing else. Without a ticket, the call counts as sent now.
        """
        self.failures_by_cause[cause] = self.failures_by_cause.get(cause, 0) + 1
        if ticket is not None and ticket.epoch != self.ejections:
            return False
        state = self.state_at(now)
        if state is BreakerState.OPEN:
            return False
        if state is BreakerState.HALF_OPEN:
            self.eject(now)
            return True
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.policy.failures_to_eject:
            self.eject(now)
            return True
        return False

    def release(self, ticket: Ticket | None, cause: Cause | None = None) -> None:
        """A call ended saying nothing about the hub (cancelled, refused as the request's fault, cut
        by its own budget): free its trial slot, if it held one; count ``cause`` if given."""
        if cause is not None:
            self.failures_by_cause[cause] = self.failures_by_cause.get(cause, 0) + 1
        if ticket is not None and ticket.trial and ticket.trial == self._trial:
            self._trial = 0

    def eject(self, now: float) -> None:
        self.backoff_s = self.policy.ejection_s(self.ejections_in_a_row)
        self.open_until = now + self.backoff_s
        self.ejections_in_a_row = min(self.ejections_in_a_row + 1, _MAX_DOUBLINGS)
        self.ejections += 1
        self._closed_ticket = Ticket(self.ejections)
        self.state = BreakerState.OPEN
        self._trial = 0
        self.consecutive_failures = 0
