"""Load shapes: ramp, spike, soak and east-west-day, each scalable in time.

Every shape reads ``--users`` as the most users it will run (the peak), and ``--shape-scale`` (or
RAILGATE_SHAPE_SCALE) as a factor on all of its durations: ``--shape-scale 0.1`` plays the 3-minute
spike in 18 s. The curves are pure functions of (elapsed seconds, peak users, scale), tested without
locust; the ``LoadTestShape`` classes only read the options and call them.

Locust runs the first ``LoadTestShape`` it finds in the locustfile's namespace, so this module
defines none: ``shape_for(name)`` makes the one class the locustfile binds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

Target = tuple[int, float]  # (users, spawn rate per second)


@dataclass(frozen=True, slots=True)
class Ramp:
    """From 0 to the peak, linearly, then hold: where does the gateway stop scaling?"""

    ramp_s: float = 120.0
    hold_s: float = 60.0

    def duration(self, scale: float) -> float:
        return (self.ramp_s + self.hold_s) * scale

    def target(self, t: float, users: int, scale: float) -> Target | None:
        ramp = self.ramp_s * scale
        if t >= self.duration(scale):
            return None
        now = max(1, math.ceil(users * min(1.0, t / ramp)))
        return now, max(1.0, 2 * users / ramp)  # twice the slope: locust keeps up with the line


@dataclass(frozen=True, slots=True)
class Spike:
    """A tenth of the peak, then the peak (10x) for 30 s, then back: do batches absorb it, and recover?"""

    before_s: float = 60.0
    spike_s: float = 30.0
    after_s: float = 90.0
    factor: float = 10.0
    rise_s: float = 2.0  # how fast the spike arrives, unscaled (it is a spike)

    def duration(self, scale: float) -> float:
        return (self.before_s + self.spike_s + self.after_s) * scale

    def target(self, t: float, users: int, scale: float) -> Target | None:
        if t >= self.duration(scale):
            return None
        base = max(1, round(users / self.factor))
        jump = max(1.0, (users - base) / min(self.rise_s, self.spike_s * scale / 5))
        start = self.before_s * scale
        if start <= t < start + self.spike_s * scale:
            return users, jump
        return base, jump


@dataclass(frozen=True, slots=True)
class Soak:
    """The same load for a long time: leaks, slow drift of latency, connection churn."""

    soak_s: float = 1800.0
    warmup_s: float = 30.0  # reach the users over this long, so the first seconds are not a spike

    def duration(self, scale: float) -> float:
        return self.soak_s * scale

    def target(self, t: float, users: int, scale: float) -> Target | None:
        if t >= self.duration(scale):
            return None
        return users, max(1.0, users / (self.warmup_s * scale))


@dataclass(frozen=True, slots=True)
class EastWestDay:
    """A day of traffic in minutes: the east wakes first, the west three hours later, nights are quiet.

    Each region's demand follows its local clock (lowest at 04:00, highest at 16:00), the west
    carrying ``west_share`` of the east's; the sum is scaled so the busiest hour runs ``--users``, and
    never drops below ``floor`` of it (edge devices do not sleep). The day starts at 03:00 east.
    """

    day_s: float = 240.0  # 24 h in 4 min: 10 s per hour
    offset_h: float = 3.0
    west_share: float = 0.8
    floor: float = 0.1
    start_h: float = 3.0

    def duration(self, scale: float) -> float:
        return self.day_s * scale

    def hour(self, t: float, scale: float) -> float:
        return (self.start_h + 24.0 * t / self.duration(scale)) % 24.0

    def demand(self, hour: float) -> float:
        """Relative demand at ``hour`` (east local time), 1.0 at the day's busiest moment."""
        return max(self.floor, self._raw(hour) / self._peak())

    def target(self, t: float, users: int, scale: float) -> Target | None:
        if t >= self.duration(scale):
            return None
        hour_s = self.duration(scale) / 24.0
        return max(1, round(users * self.demand(self.hour(t, scale)))), max(1.0, users / hour_s)

    def _raw(self, hour: float) -> float:
        def region(local_h: float) -> float:
            return (0.5 - 0.5 * math.cos(2 * math.pi * (local_h - 4.0) / 24.0)) ** 2

        return region(hour) + self.west_share * region(hour - self.offset_h)

    def _peak(self) -> float:
        return max(self._raw(m / 60.0) for m in range(24 * 60))


PLANS: dict[str, Ramp | Spike | Soak | EastWestDay] = {
    "ramp": Ramp(),
    "spike": Spike(),
    "soak": Soak(),
    "east-west-day": EastWestDay(),
}


class _PlanDriven:
    """The ``tick`` of every shape here: ``--users`` is the peak, ``--shape-scale`` stretches time."""

    runner: Any  # these two come from LoadTestShape, the other base of every class shape_for makes
    get_run_time: Any
    plan_name: ClassVar[str] = ""
    default_users: ClassVar[int] = 50

    def _options(self) -> tuple[int, float]:
        options: Any = self.runner.environment.parsed_options if self.runner is not None else None
        users = getattr(options, "num_users", None) or self.default_users
        scale = getattr(options, "shape_scale", None) or 1.0
        return int(users), float(scale)

    def tick(self) -> Target | None:
        users, scale = self._options()
        return PLANS[self.plan_name].target(self.get_run_time(), users, scale)


def shape_for(name: str) -> type:
    """The ``LoadTestShape`` class for ``name`` (a key of ``PLANS``), made on request for a locustfile to bind.

    Made here rather than defined at module level so that importing this module neither exports a
    shape to locust nor imports locust (which monkey-patches the process for gevent).
    """
    if name not in PLANS:
        raise ValueError(f"unknown shape {name!r}; expected one of {', '.join(PLANS)}")
    from locust import LoadTestShape

    class_name = "".join(part.capitalize() for part in name.split("-")) + "Shape"
    attributes = {
        "__module__": __name__,
        "plan_name": name,
        "use_common_options": True,
        "abstract": False,
        "__doc__": PLANS[name].__doc__,
    }
    return type(class_name, (_PlanDriven, LoadTestShape), attributes)


def duration_s(name: str, scale: float) -> float:
    """How long the shape ``name`` runs at ``scale`` (run.py bounds locust's run time with it)."""
    return PLANS[name].duration(scale)
