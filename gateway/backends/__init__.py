"""Where a batch runs: a Triton hub on the backbone, or the gateway's own ONNX Runtime.

Every backend speaks the same small interface, in numpy arrays: ``discover`` returns the models
it serves (read from the backend itself), ``probe`` says whether it is ready, and ``infer`` runs one
batch before a deadline (a time on the event loop's clock).

This is the boundary where foreign errors become ours, once, by cause (as httpx's
``map_httpcore_exceptions``): each backend family translates its transport's and runtime's errors
into ``HubUnreachable``, ``HubProtocolError``, ``HubError``, ``HubRejected`` or ``DeadlineExceeded``
(railcore.errors), and nothing above this package sees an aiohttp, gRPC or ONNX Runtime exception.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from typing import Any, ClassVar

import numpy as np

from railcore.catalog import ModelInfo
from railcore.errors import HubProtocolError


class BackendKind(enum.StrEnum):
    HUB = "hub"  # a Triton hub on the backbone
    LOCAL = "local"  # the gateway's own ONNX Runtime


class Backend(abc.ABC):
    kind: ClassVar[BackendKind]

    def __init__(
        self, name: str, region: str = "default", price_per_1k: float = 0.0, carbon: float = 0.0, capacity: int = 1
    ) -> None:
        self.name = name
        self.region = region
        self.price_per_1k = price_per_1k
        self.carbon_g_per_kwh = carbon
        self.capacity = capacity  # batches it takes at once
        self.healthy = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
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
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float,
        timeout_s: float | None = None,
        trace: Any = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch; every input carries the batch dimension first. Raise a RailgateError.

        ``deadline``: the call never outlives it. ``timeout_s``: the budget to tell a backend that
        can drop work itself (Triton's ``timeout``); None: what is left before ``deadline``.
        ``trace``: this call's span when tracing is on (passed only then): a hub is sent its
        ``traceparent``, so Triton's own OpenTelemetry trace joins the caller's."""

    # -- in flight -------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Batches in flight here now."""
        return self._inflight

    @inflight.setter
    def inflight(self, value: int) -> None:
        self._inflight = value
        if value:
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no batch is in flight here (a retired hub is closed then)."""
        await self._idle.wait()


def require_rows(backend: str, outputs: dict[str, np.ndarray], rows: int) -> None:
    """A batch of ``rows`` must come back with ``rows`` rows in every output: anything else is the
    backend's protocol error, and splitting it would hand one request another's answer."""
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise HubProtocolError(f"{backend} returned output {name!r} without {rows} rows")
