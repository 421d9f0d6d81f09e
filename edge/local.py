"""The models in service on the device: verified, loaded, warmed up, each behind its micro-batcher.

Loading reads the store (``store.ModelStore``: verified bytes or a refusal), builds an ONNX Runtime
session from those bytes with the configured providers and threads, runs it once at batch size 1 and
times a second run to seed the local latency predictor. A new version (from a sync) is built the same
way and then swapped in under the model's existing batcher, so calls never see a gap.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Executor
from typing import Any

from edge.config import EdgeConfig
from edge.engine import LocalModel, MicroBatcher, load_model, session_options
from edge.errors import ModelRefused
from edge.metrics import EdgeMetrics
from edge.predict import LocalPredictor
from edge.store import ModelStore, VerifiedModel
from railcore.batching import BatchPolicy
from railcore.catalog import ModelInfo
from railcore.errors import ModelNotFound

log = logging.getLogger("railgate.edge")


class LocalModels:
    def __init__(self, config: EdgeConfig, store: ModelStore, pool: Executor, metrics: EdgeMetrics) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.predictor = LocalPredictor()
        self.providers: list[str] = []
        self.lanes: dict[str, MicroBatcher] = {}
        self.refused: dict[str, str] = {}  # model -> why it cannot run on the device
        self._options = session_options(config.threads.intra_op, config.threads.inter_op)
        self._batch_children: dict[str, Any] = {}
        self._published_sha: dict[str, str] = {}

    def load_all(self, names: tuple[str, ...]) -> None:
        """Verify, load and warm up each of ``names`` found in the repository (blocking: run it in the pool)."""
        for name in names:
            try:
                verified = self.store.load(name)
            except ModelNotFound:
                continue  # not on the device (yet): a sync may bring it
            except ModelRefused as exc:
                self.refused[name] = exc.message
                log.warning("event=model_refused model=%s why=%s", name, exc.message)
                continue
            try:
                model, warm_ms = self.build(verified)
            except Exception as exc:
                self.refused[name] = f"does not load in onnxruntime: {exc}"
                log.warning("event=model_load_failed model=%s error=%s", name, exc)
                continue
            self.install(model, warm_ms)

    def build(self, verified: VerifiedModel) -> tuple[LocalModel, float]:
        """A warmed-up session for ``verified`` and the milliseconds of its timed warm-up run (blocking)."""
        model = load_model(verified, self.providers, self._options)
        return model, model.warm_up()

    def install(self, model: LocalModel, warm_ms: float) -> None:
        """Put ``model`` in service: a new lane, or a swap under the existing one (calls in flight finish first)."""
        self.predictor.forget(model.name)
        self.predictor.observe(model.name, 1, warm_ms)
        lane = self.lanes.get(model.name)
        policy = self._batch_policy(model.info)
        if lane is None:
            self.lanes[model.name] = MicroBatcher(model, policy, self.pool, self._observed)
        else:
            lane.swap(model, policy)
        self.refused.pop(model.name, None)
        old = self._published_sha.get(model.name)
        if old is not None:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(model.name, old)
        self.metrics.model_info.labels(model.name, model.sha256).set(1)
        self._published_sha[model.name] = model.sha256
        self.metrics.predicted.labels(model.name, "local").set(warm_ms)

    def _batch_policy(self, info: ModelInfo) -> BatchPolicy:
        b = self.config.batching
        if info.max_batch_size <= 0:
            return BatchPolicy(1, 0.0, (), b.max_concurrent_runs)
        return BatchPolicy(
            min(b.max_batch_size, info.max_batch_size), b.max_queue_delay_ms / 1000, (), b.max_concurrent_runs
        )

    def _observed(self, model: str, rows: int, ms: float) -> None:
        self.predictor.observe(model, rows, ms)
        child = self._batch_children.get(model)
        if child is None:
            child = self._batch_children[model] = self.metrics.local_batch.labels(model)
        child.observe(rows)
