"""Triton's statistics extension, from the gateway's own view of each model.

Both fronts serve it (``GET /v2/models[/{m}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics``)
in Triton's schema, so client code that calls ``get_inference_statistics()`` works unchanged:

    success / fail   requests answered / failed, and their whole time in the gateway (ns)
    queue            time requests waited in the gateway's batch queue
    compute_infer    backend time (hub round trip or local run) of the batches they rode in
    inference_count  rows inferred (a request of batch 4 counts 4), execution_count batches sent
    batch_stats      per batch size: how many batches and their backend time
    last_inference   ms since the epoch of the last answer

Counts are kept per (model, resolved version) for the models the gateway serves (a call that names
no version counts for the latest); nothing is created for a name a client chose (an unknown model
or version is a 404 before anything is counted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ModelCounts:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)


_ZERO = {"count": 0, "ns": 0}


class Statistics:
    """Per-model counters the service and the pipeline update; rendered in Triton's JSON schema."""

    def __init__(self, wall_clock=time.time) -> None:
        self._wall_clock = wall_clock
        self._models: dict[tuple[str, str], ModelCounts] = {}

    def _counts(self, model: str, version: str) -> ModelCounts:
        counts = self._models.get((model, version))
        if counts is None:
            counts = self._models[(model, version)] = ModelCounts()
        return counts

    def answered(self, model: str, version: str, rows: int, total_s: float, queue_s: float, backend_s: float) -> None:
        counts = self._counts(model, version)
        counts.success.add(total_s)
        counts.queue.add(queue_s)
        counts.compute_infer.add(backend_s)
        counts.inference_count += rows
        counts.last_inference_ms = int(self._wall_clock() * 1000)

    def failed(self, model: str, version: str, total_s: float) -> None:
        self._counts(model, version).fail.add(total_s)

    def executed(self, model: str, version: str, rows: int, backend_s: float) -> None:
        """One batch sent to a backend and answered (``rows`` in it)."""
        counts = self._counts(model, version)
        counts.execution_count += 1
        bucket = counts.batches.get(rows)
        if bucket is None:
            bucket = counts.batches[rows] = Duration()
        bucket.add(backend_s)

    def render(self, models: dict[str, tuple[str, ...]], only: str = "", version: str = "") -> dict[str, Any]:
        """``{"model_stats": [...]}`` for ``models`` (name -> versions), or for one model/version."""
        stats = []
        for name, versions in sorted(models.items()):
            if only and name != only:
                continue
            for v in versions:
                if version and v != version:
                    continue
                counts = self._models.get((name, v)) or ModelCounts()
                stats.append(_model_stats(name, v, counts))
        return {"model_stats": stats}


def _model_stats(name: str, version: str, counts: ModelCounts) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": {
            "success": counts.success.as_dict(),
            "fail": counts.fail.as_dict(),
            "queue": counts.queue.as_dict(),
            "compute_input": dict(_ZERO),
            "compute_infer": counts.compute_infer.as_dict(),
            "compute_output": dict(_ZERO),
            "cache_hit": dict(_ZERO),
            "cache_miss": dict(_ZERO),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": dict(_ZERO),
                "compute_infer": d.as_dict(),
                "compute_output": dict(_ZERO),
            }
            for size, d in sorted(counts.batches.items())
        ],
    }
