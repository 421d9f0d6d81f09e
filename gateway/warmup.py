"""Warm-up of a newly seen hub: Triton's first batch at a new size can take seconds; traffic should not pay.

One batch per power-of-two batch size (and preferred size) of every model the hub serves, then one
single-row batch per model, now warm, whose latency seeds the router's estimate.

The data follows the model config's ``model_warmup`` samples where it has them, as Triton defines
them: ``zero_data`` is zeros (empty strings for BYTES: Triton's zero buffer holds lengths of 0),
``random_data`` random values (for BYTES the same as zero data, as in Triton), and
``input_data_file`` names a file in the hub's ``warmup/`` folder, which the gateway cannot read: it
sends valid data in its place. Without samples, every input gets valid data: zeros for numbers and
the decimal string ``"0"`` for BYTES, which is text for string models and parses for models that
cast their strings to numbers (an empty string does not).

Warm-up is an optimisation: a model whose warm-up fails is logged and still served, and the
hub's other models are warmed regardless.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.backends import Backend
from gateway.routing.router import Router
from gateway.routing.state import batch_bucket
from railcore.catalog import ModelInfo, TensorMeta
from railcore.protocol.types import numpy_dtype

log = logging.getLogger("railgate.gateway")


class Fill(enum.StrEnum):
    """What one warm-up input holds."""

    ZERO = "zero"  # Triton's zero_data
    RANDOM = "random"  # Triton's random_data
    VALID = "valid"  # data any model of the datatype accepts (also for an unreadable input_data_file)


@dataclass(frozen=True, slots=True)
class SampleInput:
    dims: tuple[int, ...]  # without the batch dim, as model_warmup writes them
    fill: Fill


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One ``model_warmup`` entry of a model config."""

    name: str
    batch_size: int
    inputs: Mapping[str, SampleInput]


async def warm_up(backend: Backend, router: Router, timeout_s: float) -> None:
    """Send the warm-up batches to ``backend``, all within ``timeout_s``; failures are per model."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    models = list(backend.models.values())
    warmed = await asyncio.gather(*(_warm_model(backend, info, deadline) for info in models))
    # One more single-row call per model, now warm, seeds the latency estimates: an unmeasured
    # hub counts as fastest, and tight budgets would otherwise be sent to it to find out.
    seeded = 0
    for info, ok in zip(models, warmed, strict=True):
        if not ok:
            continue
        rows = 1 if info.max_batch_size > 0 else 0
        samples = warmup_samples(info)
        inputs = warmup_inputs(info, rows, samples[0] if samples else None)
        start = router.clock()  # a duration: the router's high-resolution clock, not the loop's 1 ms steps
        try:
            await backend.infer(info.name, "", inputs, _outputs(info), deadline)
        except Exception as exc:  # warm-up never takes a model out of service
            _log_failure(backend, info, exc)
            continue
        router.report(backend, info.name, max(rows, 1), router.clock() - start, ok=True)
        seeded += 1
    log.info("event=hub_warmed hub=%s models=%d warmed=%d", backend.name, len(models), seeded)


async def _warm_model(backend: Backend, info: ModelInfo, deadline: float) -> bool:
    """Every warm-up batch of one model, at once; False (and logged) if any failed."""
    calls = [backend.infer(info.name, "", inputs, _outputs(info), deadline) for inputs in warmup_batches(info)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for result in failed:
        if not isinstance(result, Exception):  # cancellation and the like are not the model's
            raise result
    if failed:
        _log_failure(backend, info, failed[0])
    return not failed


def _log_failure(backend: Backend, info: ModelInfo, exc: BaseException) -> None:
    log.warning("event=warmup_failed hub=%s model=%s still_served=true error=%r", backend.name, info.name, exc)


def _outputs(info: ModelInfo) -> list[str]:
    return [o.name for o in info.outputs]


def warmup_sizes(info: ModelInfo) -> list[int]:
    """The batch sizes to warm: each batch bucket up to the model's maximum, and its preferred sizes
    ([0] for a model that does not batch)."""
    if info.max_batch_size <= 0:
        return [0]
    sizes = {batch_bucket(r) for r in range(1, info.max_batch_size + 1)} | set(info.preferred_batch_sizes)
    return sorted(s for s in sizes if s <= info.max_batch_size)


def warmup_batches(info: ModelInfo, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The warm-up batches of one model: each of its ``model_warmup`` samples at its own batch size,
    and each size of ``warmup_sizes`` not already sent, with the first sample's data (or valid data)."""
    rng = np.random.default_rng(seed)
    samples = warmup_samples(info)
    batches, sent = [], set()
    for sample in samples:
        rows = _rows(info, sample.batch_size)
        batches.append(warmup_inputs(info, rows, sample, rng))
        sent.add(rows)
    first = samples[0] if samples else None
    batches += [warmup_inputs(info, rows, first, rng) for rows in warmup_sizes(info) if rows not in sent]
    return batches


def _rows(info: ModelInfo, batch_size: int) -> int:
    if info.max_batch_size <= 0:
        return 0
    return min(max(batch_size, 1), info.max_batch_size)


def warmup_samples(info: ModelInfo) -> tuple[WarmupSample, ...]:
    """The model config's ``model_warmup`` entries (HTTP JSON, or gRPC's, whose int64s are strings)."""
    return tuple(_sample(entry) for entry in info.config.get("model_warmup") or ())


def _sample(entry: Mapping[str, Any]) -> WarmupSample:
    inputs = {}
    for name, spec in (entry.get("inputs") or {}).items():
        if "zero_data" in spec:
            fill = Fill.ZERO
        elif "random_data" in spec:
            fill = Fill.RANDOM
        else:  # input_data_file: a file on the hub, out of the gateway's reach
            fill = Fill.VALID
        inputs[name] = SampleInput(tuple(int(d) for d in spec.get("dims") or ()), fill)
    return WarmupSample(str(entry.get("name", "")), int(entry.get("batch_size") or 1), inputs)


def warmup_inputs(
    info: ModelInfo, rows: int, sample: WarmupSample | None = None, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Inputs of ``rows`` rows (no batch dimension for ``rows == 0``), filled as ``sample`` says for
    the inputs it names and with valid data for the others."""
    rng = rng or np.random.default_rng(0)
    inputs = {}
    for tensor in info.inputs:
        given = sample.inputs.get(tensor.name) if sample is not None else None
        dims = list(given.dims) if given is not None and given.dims else _model_dims(info, tensor)
        dims = [1 if d < 0 else d for d in dims]
        shape = [rows, *dims] if rows else dims
        inputs[tensor.name] = _filled(tensor.datatype, shape, given.fill if given else Fill.VALID, rng)
    return inputs


def _model_dims(info: ModelInfo, tensor: TensorMeta) -> list[int]:
    """The tensor's dims past the batch dim (all of them for a model that does not batch)."""
    return list(tensor.shape[1:] if info.max_batch_size > 0 else tensor.shape)


def _filled(datatype: str, shape: list[int], fill: Fill, rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    if dtype.kind == "O":
        return np.full(shape, b"0" if fill is Fill.VALID else b"", dtype=object)
    if fill is not Fill.RANDOM:
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu" and datatype != "BF16":
        return rng.integers(0, 10, shape).astype(dtype)
    if datatype == "BF16":  # raw bits: the upper half of float32s in [0, 1)
        return (rng.random(shape, dtype=np.float32).view(np.uint32) >> 16).astype(dtype)
    return rng.random(shape).astype(dtype)
