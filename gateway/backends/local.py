"""The gateway's own ONNX Runtime backend over a Triton model repository.

Sessions run in a thread pool: ONNX Runtime releases the GIL, so the event loop keeps serving while
a batch computes. A run whose result is no longer wanted (past its deadline, or cancelled: a hedge
loser, a closed pipeline) is told to stop in its thread (``RunOptions.terminate``).

The fast path: a model whose measured run (a peak-sensitive EWMA of the run alone, per session: its
thread's CPU time with one intra-op thread, so a preempted run does not count as a long one) is at
most ``local.inline_max_ms`` runs on the event loop itself. Handing a run of a tiny model (tens of
microseconds) to a thread and back costs more than the run, and on a busy machine the wake-up of the
loop after it can take milliseconds: a tight budget's call spent most of its time there. One slow run
lifts the EWMA over the threshold at once, so the next ones go to the pool again.
ONNX Runtime's failures become ``HubModelFailed`` here, once (``_ort_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.backends import Backend, BackendKind
from gateway.config import Local
from railcore.catalog import ModelInfo
from railcore.errors import DeadlineExceeded, HubModelFailed, ModelNotFound, NoBackend
from railcore.estimators import PeakEwma
from railcore.onnx import bytes_elements, choose_providers, ort_strings
from railcore.repository import RepositoryError, model_info, read_repository

log = logging.getLogger("railgate.local")


@contextlib.contextmanager
def _ort_errors(model: str) -> Iterator[None]:
    """ONNX Runtime's failures during one run, as ours."""
    try:
        yield
    except TimeoutError:
        raise DeadlineExceeded(f"deadline passed while {model!r} ran locally") from None
    except Exception as exc:
        # ONNX Runtime ran the model and it failed on this data: the local backend itself is fine.
        raise HubModelFailed(f"local onnxruntime failed on {model!r}: {exc}") from exc


def _timed_run(
    session: ort.InferenceSession, outputs: list[str], feed: dict[str, Any], options: ort.RunOptions, cpu: bool
) -> tuple[list[np.ndarray], float]:
    """One run and its own cost, not the hand-off around it. ``cpu``: the CPU time of the thread that
    ran it (ONNX Runtime with one intra-op thread computes in the caller's thread), which a busy
    machine's preemption does not inflate; else the wall time of the run."""
    clock = time.thread_time if cpu else time.perf_counter
    start = clock()
    results = session.run(outputs, feed, options)
    return results, clock() - start


def _discard_outcome(future: asyncio.Future[tuple[list[np.ndarray], float]]) -> None:
    if not future.cancelled():
        future.exception()


class LocalBackend(Backend):
    kind = BackendKind.LOCAL

    def __init__(self, config: Local) -> None:
        # The gateway's own machine, in the gateway's region (``local.region``): residency applies
        # to it as to any hub.
        super().__init__("local", region=config.region, capacity=config.workers)
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="railgate-ort")
        self.sessions: dict[tuple[str, str], ort.InferenceSession] = {}
        self.providers: list[str] = []
        self.inline_max_s = config.inline_max_ms / 1000
        self._cpu_clock = config.intra_op_threads == 1  # else a run computes in other threads too
        # Each session's run time, the run alone (one entry per loaded session: bounded by the repository).
        self.run_s: dict[tuple[str, str], PeakEwma] = {}

    async def start(self) -> None:
        self.providers = choose_providers(self.config.providers)
        try:
            repo = read_repository(Path(self.config.repository), self.config.models)
        except RepositoryError as exc:
            raise NoBackend(f"local backend: {exc}") from exc
        loop = asyncio.get_running_loop()
        for model in repo:
            for version in model.versions:
                path = model.directory / version / "model.onnx"
                if path.is_file():
                    session = await loop.run_in_executor(self.pool, self._load, path)
                    self.sessions[(model.name, version)] = session
            self.models[model.name] = model_info(model)
        self.healthy = True
        log.info("local backend ready models=%s providers=%s", ",".join(self.models), ",".join(self.providers))

    def _load(self, path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=self.providers)

    async def close(self) -> None:
        self.healthy = False
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def discover(self) -> dict[str, ModelInfo]:
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        return bool(self.sessions)

    def _session(self, model: str, version: str) -> tuple[tuple[str, str], ort.InferenceSession]:
        info = self.models.get(model)
        if info is None:
            raise ModelNotFound(f"model {model!r} is not in the local repository")
        key = (model, version or info.versions[-1])
        session = self.sessions.get(key)
        if session is None:
            raise ModelNotFound(f"model {model!r} has no local version {version!r}")
        return key, session

    def _inline(self, key: tuple[str, str]) -> bool:
        """Whether this session's runs are measured short enough to make on the loop."""
        measured = self.run_s.get(key)
        return measured is not None and measured.value is not None and measured.value <= self.inline_max_s

    def _measured(self, key: tuple[str, str], seconds: float) -> None:
        estimate = self.run_s.get(key)
        if estimate is None:
            estimate = self.run_s[key] = PeakEwma()
        estimate.update(seconds)

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
        key, session = self._session(model, version)
        if trace is not None:
            trace.set_attribute("railgate.providers", ",".join(self.providers))
        feed = {k: ort_strings(v) if v.dtype.kind == "O" else v for k, v in inputs.items()}
        run_options = ort.RunOptions()
        loop = asyncio.get_running_loop()
        if self._inline(key):
            if loop.time() >= deadline:
                raise DeadlineExceeded(f"deadline passed before {model!r} ran locally")
            self.inflight += 1
            try:
                with _ort_errors(model):
                    results, seconds = _timed_run(session, outputs, feed, run_options, self._cpu_clock)
            finally:
                self.inflight -= 1
            self._measured(key, seconds)
            return _outputs(outputs, results)
        future = loop.run_in_executor(self.pool, _timed_run, session, outputs, feed, run_options, self._cpu_clock)
        self.inflight += 1
        try:
            with _ort_errors(model):
                async with asyncio.timeout_at(deadline):
                    # Shielded: cancelling the wrapper would not stop the thread, only forget it.
                    results, seconds = await asyncio.shield(future)
        except BaseException:
            if not future.done():
                run_options.terminate = True  # stop the run in its thread; its result is not wanted
                # Its outcome (the terminate error, as a rule) is taken when it ends: asyncio logs
                # "Future exception was never retrieved" for a future nobody awaits.
                future.add_done_callback(_discard_outcome)
            raise
        finally:
            self.inflight -= 1
        self._measured(key, seconds)
        return _outputs(outputs, results)


def _outputs(names: list[str], results: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {n: bytes_elements(r) if r.dtype.kind == "O" else r for n, r in zip(names, results, strict=True)}
