"""Warm-up of a newly seen hub: Triton's first batch at a new size can take seconds; traffic should not pay.

One batch of zeros per power-of-two batch size (and preferred size) of every model the hub serves,
then one single-row batch per model, now warm, whose latency seeds the router's estimate.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from gateway.backends import Backend
from gateway.routing.router import Router
from gateway.routing.state import batch_bucket
from railcore.catalog import ModelInfo
from railcore.protocol.types import numpy_dtype

log = logging.getLogger("railgate.gateway")


async def warm_up(backend: Backend, router: Router, timeout_s: float) -> None:
    """Send the warm-up batches to ``backend``, all within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    calls = [
        backend.infer(info.name, "", zeros(info, rows), [o.name for o in info.outputs], deadline)
        for info in backend.models.values()
        for rows in warmup_sizes(info)
    ]
    await asyncio.gather(*calls)
    # One more single-row call per model, now warm, seeds the latency estimates: an unmeasured
    # hub counts as fastest, and tight budgets would otherwise be sent to it to find out.
    for info in backend.models.values():
        rows = 1 if info.max_batch_size > 0 else 0
        start = loop.time()
        await backend.infer(info.name, "", zeros(info, rows), [o.name for o in info.outputs], deadline)
        router.report(backend, info.name, max(rows, 1), loop.time() - start, ok=True)
    log.info("event=hub_warmed hub=%s batches=%d", backend.name, len(calls) + len(backend.models))


def warmup_sizes(info: ModelInfo) -> list[int]:
    """The batch sizes to warm: each batch bucket up to the model's maximum, and its preferred sizes
    ([0] for a model that does not batch)."""
    if info.max_batch_size <= 0:
        return [0]
    sizes = {batch_bucket(r) for r in range(1, info.max_batch_size + 1)} | set(info.preferred_batch_sizes)
    return sorted(s for s in sizes if s <= info.max_batch_size)


def zeros(info: ModelInfo, rows: int) -> dict[str, np.ndarray]:
    """Inputs of ``rows`` rows (no batch dimension for ``rows == 0``), zeros or empty strings."""
    inputs = {}
    for tensor in info.inputs:
        dims = [1 if d < 0 else d for d in tensor.shape]
        if rows:
            dims[0] = rows
        dtype = numpy_dtype(tensor.datatype)
        if dtype.kind == "O":
            inputs[tensor.name] = np.full(dims, b"", dtype=object)
        else:
            inputs[tensor.name] = np.zeros(dims, dtype=dtype)
    return inputs
