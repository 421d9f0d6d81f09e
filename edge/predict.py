"""Latency predictors for the offload decision: peak-sensitive EWMAs, fed by what the device measures.

Pure objects (``now`` passed in); the runtime feeds them from its own runs and from the gateway's
reply headers. Peak-sensitive (``railcore.estimators.PeakEwma``): a path that turns slow is
predicted slow at once, one that recovers earns its traffic back over a few samples.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from railcore.estimators import PeakEwma


class LocalPredictor:
    """Local service time per model and batch size, measured on this device (warm-up seeds batch size 1)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._ewma: dict[str, dict[int, PeakEwma]] = {}

    def observe(self, model: str, rows: int, ms: float) -> None:
        sizes = self._ewma.get(model)
        if sizes is None:
            sizes = self._ewma[model] = {}
        ewma = sizes.get(rows)
        if ewma is None:
            ewma = sizes[rows] = PeakEwma(self.alpha)
        ewma.update(ms)

    def forget(self, model: str) -> None:
        """Drop a model's figures (its session was replaced by a new version)."""
        self._ewma.pop(model, None)

    def predict(self, model: str, rows: int) -> float | None:
        """Predicted ms for ``rows``; an unmeasured size is scaled from the nearest measured one."""
        sizes = self._ewma.get(model)
        if not sizes:
            return None
        exact = sizes.get(rows)
        if exact is not None and exact.value is not None:
            return exact.value
        below = [s for s in sizes if s < rows and sizes[s].value is not None]
        if below:  # linear in rows: pessimistic, batching is cheaper than that per row
            size = max(below)
            return sizes[size].value * rows / size  # type: ignore[operator]
        above = [s for s in sizes if sizes[s].value is not None]
        return sizes[min(above)].value if above else None  # a smaller batch is no slower than a larger one


@dataclass(slots=True)
class _ModelRemote:
    queue: PeakEwma
    backend: PeakEwma
    updated_at: float = 0.0


@dataclass(slots=True)
class RemotePredictor:
    """Remote latency = gateway round trip (EWMA) + the gateway's queue and backend time for the model.

    The gateway reports its own queue and backend time per reply (``X-Queue-Ms``, ``X-Backend-Ms``); the
    round trip is what is left of the measured total. A model's figures older than ``stale_s`` count as
    unmeasured, so a bad spell is re-measured instead of keeping the model off the gateway forever.
    """

    stale_s: float = 30.0
    alpha: float = 0.2
    max_models: int = 1024  # a cut call's model name is the caller's: the least recently measured goes first
    rtt: PeakEwma = field(default_factory=PeakEwma)
    _models: OrderedDict[str, _ModelRemote] = field(default_factory=OrderedDict)

    def observe_rtt(self, ms: float) -> None:
        self.rtt.update(ms)

    def models(self) -> int:
        """How many models have remote figures (bounded by ``max_models``)."""
        return len(self._models)

    def observe(self, model: str, total_ms: float, queue_ms: float, backend_ms: float, now: float) -> None:
        entry = self._models.get(model)
        if entry is None:
            entry = self._models[model] = _ModelRemote(PeakEwma(self.alpha), PeakEwma(self.alpha))
            if len(self._models) > self.max_models:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(model)
        entry.queue.update(queue_ms)
        entry.backend.update(backend_ms)
        entry.updated_at = now
        self.rtt.update(max(total_ms - queue_ms - backend_ms, 0.0))

    def observe_cut(self, model: str, elapsed_ms: float, now: float) -> None:
        """A call cut at ``elapsed_ms`` without an answer: the remote path takes at least that long."""
        rtt = self.rtt.value or 0.0
        self.observe(model, elapsed_ms, 0.0, max(elapsed_ms - rtt, 0.0), now)

    def predict(self, model: str, now: float) -> float | None:
        """Predicted ms of the whole remote path for ``model``; None when unmeasured or stale."""
        entry = self._models.get(model)
        rtt = self.rtt.value
        if entry is None or rtt is None or now - entry.updated_at > self.stale_s:
            return None
        return rtt + (entry.queue.value or 0.0) + (entry.backend.value or 0.0)
