"""The value objects of the pipeline: a lane's key and state, an admitted request, its share of a batch.

A lane is one batch queue: requests share a batch only if their ``LaneKey`` agrees (model, version,
route, budget class). Plain data; ``gateway/pipeline.py`` runs the lanes.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.routing.policy import Route
from railcore.batching import BatchQueue
from railcore.catalog import ModelInfo
from railcore.protocol.types import InferRequest

DEFAULT_ROUTE = Route()
# Budgets are batched by class: a batch carries its tightest member's deadline, so one 40 ms request
# in a batch of 1 s requests would drag all of them to the nearest (and dearest) hub.
BUDGET_CLASSES_S = (0.02, 0.05, 0.2, 1.0, 5.0)


def budget_class(budget_s: float) -> int:
    return bisect.bisect_left(BUDGET_CLASSES_S, budget_s)


@dataclass(slots=True)  # built per batch or request and never changed; not frozen, whose __init__ costs ~4x
class BatchResult:
    """One request's share of a batch's outputs (views into the batch's arrays, not copies)."""

    outputs: dict[str, np.ndarray]
    backend: str
    batch_size: int
    route_reason: str
    queue_s: float
    backend_s: float


@dataclass(slots=True)
class Admitted:
    request: InferRequest
    future: asyncio.Future[BatchResult]
    gone: Callable[[], bool]  # the client went away
    queued_at: float  # on the pipeline's measuring clock, for queue time
    trace: Any = None  # the request's span, when tracing is on (gateway/tracing.py)
    queued_ns: int = 0  # wall-clock ns it was queued at, for its queue-wait span (tracing only)

    def abandoned(self) -> bool:
        return self.future.done() or self.gone()


@dataclass(frozen=True, slots=True)
class LaneKey:
    """The batch key: requests share a batch only if all four agree."""

    model: str
    version: str
    route: Route  # policy and residency
    budget_class: int  # index into BUDGET_CLASSES_S

    def _index(self) -> tuple[str, str, Route, int]:
        return (self.model, self.version, self.route, self.budget_class)


@dataclass(slots=True)
class Lane:
    key: LaneKey
    info: ModelInfo
    queue: BatchQueue[Admitted]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    runner: asyncio.Task[None] | None = None
    # When a batch was last sent or ended, on the loop's clock: the lane is idle ``idle_lane_s`` after.
    active_at: float = 0.0
    # Expected service time by batch bucket: asked on every arrival, it changes only when a batch
    # returns (new measurements), so it is kept until then instead of re-derived per request.
    estimates: dict[int, float] = field(default_factory=dict)
    # The model's railgate_queue_depth series (looked up once: it moves on every queued request and batch).
    depth: Any = None
