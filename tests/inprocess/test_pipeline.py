"""The pipeline in-process, over the real local ONNX Runtime backend: what reaches a backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.local import LocalBackend
from gateway.config import Batching, Limits, Local
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.routing.router import Router
from railcore.errors import ClientGone, DeadlineExceeded
from railcore.protocol.types import InferRequest, Tensor


@pytest.fixture
async def pipeline(repository: Path):
    backend = LocalBackend(Local(repository=str(repository), models=("digits",)))
    await backend.start()
    router = Router([backend])
    router.rebuild_catalog()
    pipe = Pipeline(router, Batching(max_queue_delay_ms=1000.0, max_inflight_batches=1), Limits(), Metrics())
    yield pipe
    await pipe.close()
    await backend.close()


def _request(seed: int, rows: int = 1) -> InferRequest:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32) * 16
    return InferRequest("digits", "", [Tensor("pixels", "FP32", x.shape, x)], id=f"r{seed}")


def _batches_sent(pipe: Pipeline) -> float:
    return sum(s.value for m in pipe.metrics.batch_size.collect() for s in m.samples if s.name.endswith("_count"))


async def test_client_gone_before_its_batch_is_sent_never_reaches_the_backend(pipeline: Pipeline):
    info = pipeline.router.model("digits")
    deadline = asyncio.get_running_loop().time() + 10
    gone = asyncio.ensure_future(pipeline.submit(_request(1), info, 1, deadline, gone=lambda: True))
    alive = asyncio.ensure_future(pipeline.submit(_request(2, rows=3), info, 3, deadline, gone=lambda: False))
    result = await alive
    with pytest.raises(ClientGone):
        await gone
    assert result.batch_size == 3, "the departed client's row was sent anyway"
    assert _batches_sent(pipeline) == 1


async def test_batch_outputs_are_split_back_per_request(pipeline: Pipeline):
    info = pipeline.router.model("digits")
    deadline = asyncio.get_running_loop().time() + 10
    requests = [_request(10 + i, rows=1 + i % 3) for i in range(12)]
    results = await asyncio.gather(
        *(pipeline.submit(r, info, r.inputs[0].shape[0], deadline, gone=lambda: False) for r in requests)
    )
    assert max(r.batch_size for r in results) > 3, "concurrent requests did not batch"
    session = pipeline.router.backends[0].sessions[("digits", "1")]
    for request, result in zip(requests, results, strict=True):
        label, probabilities = session.run(None, {"pixels": request.inputs[0].data})
        np.testing.assert_array_equal(result.outputs["label"], label)
        np.testing.assert_allclose(result.outputs["probabilities"], probabilities, rtol=1e-6, atol=1e-7)


async def test_request_whose_deadline_passes_in_the_queue_gets_504_and_is_not_sent(pipeline: Pipeline):
    """A request admitted in time waits behind a batch the backend holds; its deadline passes in the
    queue: it is answered 504 at its deadline and never reaches the backend, not even in the batch of
    a later request of its lane that is sent once the lane is free."""
    info = pipeline.router.model("digits")
    loop = asyncio.get_running_loop()
    backend = pipeline.router.backends[0]
    real_infer, at_backend, held, rows_sent = backend.infer, asyncio.Event(), asyncio.Event(), []

    async def hold_then_infer(model, version, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        rows_sent.append(next(iter(inputs.values())).shape[0])
        at_backend.set()
        await held.wait()
        return await real_infer(model, version, inputs, *args, **kwargs)

    backend.infer = hold_then_infer  # type: ignore[method-assign]
    # Budgets of 200 and 100 ms share a lane (one budget class); the lane sends one batch at a time.
    first = asyncio.ensure_future(pipeline.submit(_request(4, rows=2), info, 2, loop.time() + 0.2, gone=lambda: False))
    async with asyncio.timeout(5):
        await at_backend.wait()  # the first batch is at the backend, held: the lane is busy
    admitted_at = loop.time()
    with pytest.raises(DeadlineExceeded, match="ran out"):
        await pipeline.submit(_request(3), info, 1, admitted_at + 0.1, gone=lambda: False)
    assert loop.time() - admitted_at >= 0.09, "answered before its deadline: it never waited in the queue"
    later = asyncio.ensure_future(pipeline.submit(_request(5), info, 1, loop.time() + 0.2, gone=lambda: False))
    await asyncio.sleep(0.001)  # queued behind the held batch, where the expired request was
    held.set()
    await asyncio.gather(first, later, return_exceptions=True)
    await asyncio.sleep(0.1)  # the lane is free again: a row still queued would be sent now
    assert rows_sent == [2, 1], f"rows per batch that reached the backend: {rows_sent}"


async def test_local_backend_carries_bytes_tensors_through_a_batch(repository: Path):
    backend = LocalBackend(Local(repository=str(repository), models=("vocab",)))
    await backend.start()
    router = Router([backend])
    router.rebuild_catalog()
    pipe = Pipeline(router, Batching(max_inflight_batches=1), Limits(), Metrics())
    try:
        info = router.model("vocab")
        deadline = asyncio.get_running_loop().time() + 10
        words = [b"four", "n\u00fcll".encode(), b"nine", b""]
        requests = [
            InferRequest("vocab", "", [Tensor("word", "BYTES", (1, 1), np.array([[w]], dtype=object))]) for w in words
        ]
        results = await asyncio.gather(*(pipe.submit(r, info, 1, deadline, gone=lambda: False) for r in requests))
        assert [r.outputs["echo"][0, 0] for r in results] == words
        assert [int(r.outputs["word_id"][0, 0]) for r in results] == [4, -1, 9, -1]
    finally:
        await pipe.close()
        await backend.close()
