"""The gateway's own ONNX Runtime backend: a run whose caller is gone stops (``RunOptions.terminate``),
and a stopped run leaves nothing behind in the log. A real session of the ``vision`` model, fed a
batch big enough (256 images, about 2 s on one core) to be stopped mid-run."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.backends.local import LocalBackend
from gateway.config import Local
from railcore.errors import DeadlineExceeded, HubModelFailed

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
ROWS = 256


class WatchedSession:
    """Wraps an ONNX Runtime session: says when its run starts, and how it ended."""

    def __init__(self, session: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.session, self.loop = session, loop
        self.started: asyncio.Future[None] = loop.create_future()
        self.outcome = "not run"

    def run(self, *args: Any) -> Any:
        self.loop.call_soon_threadsafe(self.started.set_result, None)
        try:
            result = self.session.run(*args)
            self.outcome = "completed"
            return result
        except Exception as exc:
            self.outcome = "terminated" if "terminate" in str(exc).lower() else f"failed: {exc}"
            raise


async def start_vision() -> tuple[LocalBackend, WatchedSession]:
    backend = LocalBackend(Local(repository=str(REPOSITORY), models=("vision",), workers=1))
    await backend.start()
    key = next(k for k in backend.sessions if k[0] == "vision")
    watched = WatchedSession(backend.sessions[key], asyncio.get_running_loop())
    backend.sessions[key] = watched  # type: ignore[assignment]
    return backend, watched


def big_batch() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).random((ROWS, 3, 64, 64), np.float32)}


async def pool_free(backend: LocalBackend) -> None:
    """Return once the backend's one worker thread is free: the run before has ended, and its
    future's outcome has reached the loop (the worker takes the next item only after that)."""
    await asyncio.get_running_loop().run_in_executor(backend.pool, lambda: None)


def never_retrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unretrieved future's exception is reported when the future is collected
    return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_cancelled_local_run_is_terminated_and_leaves_nothing_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, watched = await start_vision()
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        call = loop.create_task(backend.infer("vision", "", big_batch(), ["label"], loop.time() + 60))
        async with asyncio.timeout(30):
            await watched.started
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await pool_free(backend)
        del call
        assert watched.outcome == "terminated"
        assert never_retrieved(caplog) == []
    await backend.close()


async def test_a_local_run_past_its_deadline_is_terminated_and_leaves_nothing_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, watched = await start_vision()
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        async with asyncio.timeout(30):
            with pytest.raises(DeadlineExceeded):
                await backend.infer("vision", "", big_batch(), ["label"], loop.time() + 0.2)
            await pool_free(backend)
        assert watched.outcome == "terminated"
        assert never_retrieved(caplog) == []
    await backend.close()


# -- the fast path: a model whose measured run is tiny runs on the event loop, not through a thread --


class ThreadedSession:
    """Wraps an ONNX Runtime session: notes the thread each run is made on."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.threads: list[int] = []

    def run(self, *args: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self.session.run(*args)


async def start_digits(inline_max_ms: float) -> tuple[LocalBackend, ThreadedSession]:
    backend = LocalBackend(
        Local(repository=str(REPOSITORY), models=("digits",), workers=1, inline_max_ms=inline_max_ms)
    )
    await backend.start()
    key = next(k for k in backend.sessions if k[0] == "digits")
    threaded = ThreadedSession(backend.sessions[key])
    backend.sessions[key] = threaded  # type: ignore[assignment]
    return backend, threaded


def digits_row() -> dict[str, np.ndarray]:
    return {"pixels": np.random.default_rng(0).random((1, 64), np.float32)}


async def test_a_model_whose_measured_run_is_under_inline_max_ms_runs_on_the_loop() -> None:
    # A threshold no run of digits comes near: what is tested is the choice, not a speed.
    backend, threaded = await start_digits(inline_max_ms=1000.0)
    loop = asyncio.get_running_loop()
    results = [await backend.infer("digits", "", digits_row(), ["label"], loop.time() + 30) for _ in range(5)]
    loop_thread = threading.get_ident()
    assert threaded.threads[0] != loop_thread, "an unmeasured model runs in the pool first"
    assert threaded.threads[1:] == [loop_thread] * 4, "then on the loop, once its run is measured short"
    assert all(r["label"].shape[0] == 1 for r in results) and backend.inflight == 0
    await backend.close()


@pytest.mark.parametrize("inline_max_ms", [0.0, 1e-9])
async def test_a_model_runs_in_the_pool_when_inline_is_off_or_its_run_is_too_long(inline_max_ms: float) -> None:
    backend, threaded = await start_digits(inline_max_ms)
    loop = asyncio.get_running_loop()
    for _ in range(4):
        await backend.infer("digits", "", digits_row(), ["label"], loop.time() + 30)
    assert threading.get_ident() not in threaded.threads
    await backend.close()


async def test_an_inline_run_keeps_the_deadline_and_the_error_class() -> None:
    backend, threaded = await start_digits(inline_max_ms=1000.0)
    loop = asyncio.get_running_loop()
    await backend.infer("digits", "", digits_row(), ["label"], loop.time() + 30)  # measured: inline from now
    with pytest.raises(DeadlineExceeded):
        await backend.infer("digits", "", digits_row(), ["label"], loop.time() - 0.001)
    wrong = {"pixels": np.zeros((1, 63), np.float32)}  # ONNX Runtime refuses the shape
    with pytest.raises(HubModelFailed, match="digits"):
        await backend.infer("digits", "", wrong, ["label"], loop.time() + 30)
    assert threaded.threads[-1] == threading.get_ident() and backend.inflight == 0
    await backend.close()
