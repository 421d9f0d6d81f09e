"""The simulated world: eight hubs in three regions, and a Poisson stream of requests.

Everything random is drawn here, up front, from the seed alone: arrivals, budgets, residency and
each request's service-time noise at each hub. A run under any policy therefore meets the same
world, and the clairvoyant baseline can read the very latencies the hubs will realise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.config import HubSpec, TariffWindow
from gateway.routing.policy import Policy, Route
from gateway.routing.tariff import price_now
from railcore.catalog import ModelInfo, TensorMeta

# The request's index travels through the real batching as its input tensor and comes back as the
# output: hubs know which requests a batch holds, and clients check they got their own row back.
MODEL = ModelInfo(
    "m", ("1",), "sim", (TensorMeta("id", "INT64", (-1, 1)),), (TensorMeta("y", "INT64", (-1, 1)),), 64, (32,)
)
NOISE_SIGMA = 0.15  # lognormal spread of service times
TARIFF_MINUTES = 60  # a run spans one hour of the tariff clock, whatever its virtual length


@dataclass(frozen=True, slots=True)
class HubModel:
    """A simulated hub: how long a batch takes there, and when it misbehaves."""

    name: str
    region: str
    rtt_s: float
    base_s: float  # service time of a batch of one
    per_row_s: float  # each extra row
    capacity: int  # batches served at once
    price_per_1k: float
    carbon: float
    tariff: tuple[TariffWindow, ...] = ()
    dies_at: float | None = None
    slow_from: float | None = None
    slow_factor: float = 5.0
    flap_period_s: float | None = None  # down for the first half of every period after flap_from
    flap_from: float = 0.0

    @property
    def spec(self) -> HubSpec:
        return HubSpec(self.name, "http://sim:1", self.region, self.price_per_1k, tariff=self.tariff)

    def down(self, now: float) -> bool:
        if self.dies_at is not None and now >= self.dies_at:
            return True
        if self.flap_period_s is not None and now >= self.flap_from:
            return ((now - self.flap_from) % self.flap_period_s) < self.flap_period_s / 2
        return False

    def earliest_up(self, t: np.ndarray) -> np.ndarray:
        """For each time in ``t``, the first moment at or after it when the hub is up (inf: never)."""
        s = t.astype(np.float64, copy=True)
        if self.flap_period_s is not None:
            period = self.flap_period_s
            phase = np.mod(s - self.flap_from, period)
            in_down = (s >= self.flap_from) & (phase < period / 2)
            s = np.where(in_down, s + (period / 2 - phase), s)
        if self.dies_at is not None:
            s = np.where(s >= self.dies_at, np.inf, s)
        return s

    def slowdown(self, t: np.ndarray) -> np.ndarray:
        """The factor on service times for batches that reach the hub at times ``t``."""
        if self.slow_from is None:
            return np.ones_like(t)
        return np.where(t >= self.slow_from, self.slow_factor, 1.0)

    def service_s(self, rows: int, noise: float, now: float) -> float:
        """A batch runs as long as its slowest member would (as padded batches do)."""
        slow = self.slow_factor if self.slow_from is not None and now >= self.slow_from else 1.0
        return (self.base_s + self.per_row_s * (rows - 1)) * noise * slow


def default_hubs(duration_s: float) -> list[HubModel]:
    """Eight hubs in three regions; the cheapest is far, the nearest is dear; some misbehave."""
    return [
        HubModel("west-cheap", "west", 0.060, 0.004, 0.0002, 8, 0.006, 20,
                 tariff=(TariffWindow("00:00", "00:30", 0.010),)),
        HubModel("west-green", "west", 0.055, 0.004, 0.0002, 6, 0.009, 5),
        HubModel("west-big", "west", 0.050, 0.003, 0.0001, 16, 0.012, 40),
        HubModel("central-1", "central", 0.030, 0.004, 0.0002, 6, 0.015, 150,
                 slow_from=duration_s * 0.4, slow_factor=6.0),
        HubModel("central-2", "central", 0.032, 0.004, 0.0002, 6, 0.016, 160,
                 flap_period_s=duration_s / 10, flap_from=duration_s * 0.2),
        HubModel("east-1", "east", 0.010, 0.004, 0.0002, 4, 0.030, 400),
        HubModel("east-2", "east", 0.012, 0.004, 0.0002, 4, 0.028, 380, dies_at=duration_s * 0.5),
        HubModel("east-3", "east", 0.011, 0.004, 0.0002, 4, 0.029, 390),
    ]  # fmt: skip


# Residency classes: anywhere, west only, east or central.
RESIDENCY: tuple[frozenset[str] | None, ...] = (None, frozenset({"west"}), frozenset({"east", "central"}))


@dataclass(frozen=True, slots=True)
class Workload:
    """The request stream and the hubs' noise, as arrays indexed by request."""

    arrival: np.ndarray  # virtual seconds
    budget: np.ndarray  # seconds
    residency: np.ndarray  # index into RESIDENCY
    noise: np.ndarray  # (requests, hubs): the service-time factor each request would meet at each hub
    hubs: tuple[HubModel, ...]
    duration_s: float

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def deadline(self) -> np.ndarray:
        return self.arrival + self.budget

    def routes(self, policy: Policy) -> list[Route]:
        return [Route(policy, regions) for regions in RESIDENCY]

    def allowed(self) -> np.ndarray:
        """(residency classes, hubs): whether a class may run on a hub."""
        return np.array([[regions is None or h.region in regions for h in self.hubs] for regions in RESIDENCY])

    def minute_of_day(self, now: float) -> int:
        return int(now / self.duration_s * TARIFF_MINUTES) % 1440

    def minutes(self, t: np.ndarray) -> np.ndarray:
        """``minute_of_day`` for many times, not wrapped (for ranges of minutes)."""
        return np.floor(t / self.duration_s * TARIFF_MINUTES).astype(np.int64)

    def price_table(self, model: str = MODEL.name) -> np.ndarray:
        """(hubs, 1440): each hub's price per 1,000 at each minute, by the gateway's own tariff code."""
        specs = [h.spec for h in self.hubs]
        return np.array([[price_now(spec, model, m) for m in range(1440)] for spec in specs])


def workload(requests: int, rate: float, seed: int) -> Workload:
    gen = np.random.default_rng(seed)
    arrival = np.cumsum(gen.exponential(1.0 / rate, requests))
    # Budgets: most generous, some tight enough that only the near hubs meet them.
    budget = gen.choice([0.040, 0.150, 0.400, 1.000], size=requests, p=[0.05, 0.35, 0.40, 0.20])
    residency = gen.choice(3, size=requests, p=[0.85, 0.10, 0.05])
    # Data that must stay in the west cannot have a budget below the west's round trip: such
    # tenants run tight work on their own edge. Their budgets come from the looser classes.
    west = residency == 1
    budget[west] = gen.choice([0.150, 0.400, 1.000], size=int(west.sum()), p=[0.40, 0.40, 0.20])
    duration = float(arrival[-1]) if requests else 1.0
    hubs = tuple(default_hubs(duration))
    noise = np.random.default_rng([seed, 1]).lognormal(0.0, NOISE_SIGMA, size=(requests, len(hubs)))
    return Workload(arrival, budget, residency.astype(np.int8), noise, hubs, duration)


def percentile_ms(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if len(values) else None
