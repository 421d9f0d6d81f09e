"""Where a batch runs: a Triton hub on the backbone, or the gateway's own ONNX Runtime.

Every backend speaks the same small interface, in numpy arrays: ``discover`` returns the models
it serves (read from the backend itself), ``probe`` says whether it is ready, and ``infer`` runs one
batch before a deadline (a time on the event loop's clock).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from railcore.catalog import ModelInfo


class Backend(abc.ABC):
    kind: ClassVar[str]  # "hub" or "local"

    def __init__(
        self, name: str, region: str = "default", price_per_1k: float = 0.0, carbon: float = 0.0, capacity: int = 1
    ) -> None:
        self.name = name
        self.region = region
        self.price_per_1k = price_per_1k
        self.carbon_g_per_kwh = carbon
        self.capacity = capacity  # batches it takes at once
        self.healthy = False
        self.inflight = 0
        self.models: dict[str, ModelInfo] = {}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or sessions."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, sessions and threads."""

    @abc.abstractmethod
    async def discover(self) -> dict[str, ModelInfo]:
        """The models this backend serves now, with their metadata."""

    @abc.abstractmethod
    async def probe(self, timeout_s: float) -> bool:
        """Whether the backend answers and is ready, within ``timeout_s``."""

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        """Per model: (inference count, total queue ns, total compute ns), cumulative; {} if unknown."""
        return {}

    async def pending_requests(self) -> float | None:
        """Requests queued at the backend now (Triton's nv_inference_pending_request_count)."""
        return None

    @abc.abstractmethod
    async def infer(
        self, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float
    ) -> dict[str, np.ndarray]:
        """Run one batch; every input carries the batch dimension first. Raise a RailgateError."""
