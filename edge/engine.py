"""Local execution: ONNX Runtime sessions and the micro-batcher that combines concurrent calls.

``LocalModel`` is one verified model with its session. ``MicroBatcher`` runs one model's calls,
batched by the gateway's pure ``BatchQueue`` policy: a call that finds the model idle runs at once,
in the caller's own thread (no hand-off: that is what keeps the Python API within microseconds of a
bare ``InferenceSession.run``); calls that arrive while a run is in flight queue up and go together
in the next run, which the thread finishing the current run starts.

Waiting callers are either threads (``run``) or coroutines (``run_async``, whose batches run in the
runtime's thread pool, never on the event loop). A waiter whose flush time comes (queue delay, deadline
slack) takes the batch and runs it itself, so nobody has to own a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

from edge.store import VerifiedModel
from railcore.batching import BatchPolicy, BatchQueue, Flush
from railcore.catalog import ModelInfo
from railcore.errors import BadRequest, HubFailed
from railcore.onnx import bytes_elements, ort_strings
from railcore.protocol.types import DTYPES

# Called after each run: (model, rows, milliseconds).
BatchObserver = Callable[[str, int, float], None]


@dataclass(frozen=True, slots=True)
class _InputSpec:
    name: str
    datatype: str
    dtype: np.dtype
    dims: tuple[int, ...]  # -1: any size
    # Precomputed for the per-call shape check: ``dims[1:]`` when all fixed (a call's shape must then equal
    # ``(n, *tail)`` with n = dims[0], or any n when dims[0] is -1), None when a later dim is variable too.
    tail: tuple[int, ...] | None = None

    @staticmethod
    def of(name: str, datatype: str, dtype: np.dtype, dims: tuple[int, ...]) -> _InputSpec:
        dims = tuple(dims)
        tail = dims[1:] if dims and -1 not in dims[1:] else None
        return _InputSpec(name, datatype, dtype, dims, tail)

    def shape_fits(self, shape: tuple[int, ...]) -> bool:
        tail = self.tail
        if tail is not None:
            return shape[1:] == tail and len(shape) == len(self.dims) and self.dims[0] in (-1, shape[0])
        dims = self.dims
        return len(shape) == len(dims) and all(d == -1 or s == d for s, d in zip(shape, dims, strict=True))


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A verified model and its ONNX Runtime session."""

    name: str
    version: str
    sha256: str
    info: ModelInfo
    session: ort.InferenceSession
    output_names: tuple[str, ...]
    inputs: tuple[_InputSpec, ...]
    batching: bool = False  # max_batch_size > 0 (load_model sets it)
    # A dim past the batch dim is variable (-1): calls batch together only if those dims are equal.
    variable: bool = False
    strings: bool = False  # an output is BYTES: its elements are turned into bytes after a run
    datatypes: dict[str, str] = field(default_factory=dict)  # output name -> v2 datatype
    # Runs call the session's C binding (``session._sess.run``) rather than ``InferenceSession.run``,
    # whose checks ``prepare`` has already made, and stricter (input names, dtypes, shapes; numpy arrays
    # only, so no foreign OrtValue), saving its Python wrapper per run. False when the binding is not
    # there or the session captures graphs (WebGPU), which the wrapper must police.
    direct: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direct", _binding_usable(self.session))  # again on dataclasses.replace

    def batch_shape(self, feed: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], ...] | None:
        """The key a batch must share (the dims past the batch dim); None when they are fixed by the model."""
        return tuple(a.shape[1:] for a in feed.values()) if self.variable else None

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The feed for ONNX Runtime and the call's batch rows; BadRequest naming what is wrong."""
        if len(inputs) != len(self.inputs):
            given = ", ".join(inputs) or "none"
            raise BadRequest(
                f"model {self.name!r} takes input(s) {', '.join(s.name for s in self.inputs)}; got {given}"
            )
        feed: dict[str, np.ndarray] = {}
        rows = -1
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise BadRequest(f"model {self.name!r} needs input {spec.name!r}; got {', '.join(inputs)}")
            if not isinstance(array, np.ndarray):
                raise BadRequest(f"input {spec.name!r}: expected a numpy array, got {type(array).__name__}")
            if spec.datatype == "BYTES":
                if array.dtype.kind not in "OSU":
                    raise BadRequest(f"input {spec.name!r}: dtype {array.dtype}, expected BYTES (object, bytes or str)")
                array = ort_strings(array)
            elif array.dtype != spec.dtype:
                raise BadRequest(f"input {spec.name!r}: dtype {array.dtype}, expected {spec.datatype} ({spec.dtype})")
            shape = array.shape
            if not spec.shape_fits(shape):
                raise BadRequest(f"input {spec.name!r}: shape {list(shape)}, expected {list(spec.dims)}")
            if self.batching:
                if not 1 <= shape[0] <= self.info.max_batch_size:
                    raise BadRequest(
                        f"input {spec.name!r}: batch size {shape[0]} outside 1..{self.info.max_batch_size}"
                    )
                if rows not in (-1, shape[0]):
                    raise BadRequest(
                        f"input {spec.name!r}: batch size {shape[0]} differs from the other inputs' {rows}"
                    )
                rows = shape[0]
            feed[spec.name] = array
        return feed, max(rows, 1)

    def warm_up(self) -> float:
        """Run once at batch size 1 (lazy initialisation), then time a second run; returns its milliseconds."""
        feed = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.dims)
            if spec.datatype == "BYTES":
                feed[spec.name] = np.full(shape, "", dtype=object)
            else:
                feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        self.session.run(list(self.output_names), feed)
        started = time.perf_counter()
        self.session.run(list(self.output_names), feed)
        return (time.perf_counter() - started) * 1000


def session_options(intra_op: int, inter_op: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = inter_op
    return options


def load_model(verified: VerifiedModel, providers: list[str], options: ort.SessionOptions) -> LocalModel:
    """A session over the verified bytes (never re-read from disk: what runs is what was hashed)."""
    session = ort.InferenceSession(verified.onnx, options, providers=providers)
    info = verified.info
    specs = tuple(_InputSpec.of(t.name, t.datatype, DTYPES[t.datatype], t.shape) for t in info.inputs)
    names = tuple(t.name for t in info.outputs)
    graph_outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in names if n not in graph_outputs]
    if missing:
        raise BadRequest(f"model {info.name!r}: config.pbtxt names output(s) {', '.join(missing)} the ONNX graph lacks")
    batching = info.max_batch_size > 0
    variable = batching and any(-1 in s.dims[1:] for s in specs)
    strings = any(t.datatype == "BYTES" for t in info.outputs)
    datatypes = {t.name: t.datatype for t in info.outputs}
    return LocalModel(
        verified.name, verified.version, verified.sha256, info, session, names, specs, batching, variable, strings,
        datatypes,
    )  # fmt: skip


def _binding_usable(session: ort.InferenceSession) -> bool:
    binding = getattr(session, "_sess", None)
    if binding is None or not callable(getattr(binding, "run", None)):
        return False
    capture = getattr(binding, "is_webgpu_graph_capture_enabled", None)
    return not (capture is not None and capture())


class _Call:
    """One pending call: its feed, and where its outputs (or error) land."""

    __slots__ = ("error", "event", "feed", "future", "loop", "outputs", "rows", "taken")

    def __init__(self, feed: dict[str, np.ndarray], rows: int) -> None:
        self.feed = feed
        self.rows = rows
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.taken = False  # in a batch that is running
        self.event: threading.Event | None = None  # a waiting thread's
        self.loop: asyncio.AbstractEventLoop | None = None  # a waiting coroutine's
        self.future: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return self.outputs is not None or self.error is not None

    def finish(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
                self.loop.call_soon_threadsafe(_resolve, self.future)

    def result(self) -> dict[str, np.ndarray]:
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class MicroBatcher:
    """Runs one local model's calls, combining concurrent ones into batches."""

    def __init__(self, model: LocalModel, policy: BatchPolicy, pool: Executor, observe: BatchObserver) -> None:
        self.model = model
        self.pool = pool
        self.observe = observe
        self._queue: BatchQueue[_Call] = BatchQueue(policy)
        self._lock = threading.Lock()
        self._inflight = 0
        self._service_s = 0.0

    def pending(self) -> int:
        """Calls queued, not yet in a running batch."""
        with self._lock:
            return len(self._queue)

    def swap(self, model: LocalModel, policy: BatchPolicy) -> None:
        """Serve ``model`` (a new version) from now on; runs in flight finish on the old session."""
        with self._lock:
            self.model = model
            self._queue.policy = policy

    # -- the caller's side ------------------------------------------------------------------------

    def run(self, feed: dict[str, np.ndarray], rows: int, deadline: float) -> dict[str, np.ndarray]:
        """Run one call from a plain thread; it may run other callers' calls with it."""
        with self._lock:
            # ``rows`` is 0 exactly when nothing is queued (every call brings a row at least): no __len__ call.
            if not self._queue.rows and self._inflight < self._queue.policy.max_inflight_batches:
                # What the policy decides for a lone call on an idle lane (an idle or full flush of it alone),
                # without queueing it: run it here, now.
                self._inflight += 1
                model = self.model
                call = None
            else:
                call = _Call(feed, rows)
                self._queue.push(call, rows, deadline, time.monotonic(), self.model.batch_shape(feed))
                batch = self._next_batch()
        if call is None:
            return self._run_alone(model, feed, rows)
        while True:
            if batch is not None:
                self._execute(batch)
                with self._lock:
                    batch = self._next_batch()
                if call.done:
                    if batch is not None:  # others are waiting: a pool thread runs them, this caller returns
                        self.pool.submit(self._drain, batch)
                    return call.result()
                continue
            with self._lock:
                if call.done:
                    return call.result()
                timeout = None
                if not call.taken:
                    batch, timeout = self._next_or_wait()
                    if batch is not None:
                        continue
                if call.event is None:
                    call.event = threading.Event()
            call.event.wait(timeout)
            if call.done:
                return call.result()

    async def run_async(
        self, feed: dict[str, np.ndarray], rows: int, deadline: float, inline: bool = False
    ) -> dict[str, np.ndarray]:
        """Run one call from a coroutine; batches run in the pool, never on the event loop.

        ``inline``: the call's predicted run is shorter than the hand-off to a pool thread and back
        (``batching.inline_max_ms``), so on an idle lane it runs here, on the loop, at once.
        """
        if inline:
            with self._lock:
                idle = not self._queue.rows and self._inflight < self._queue.policy.max_inflight_batches
                if idle:
                    self._inflight += 1
                    model = self.model
            if idle:
                return self._run_alone(model, feed, rows)
        loop = asyncio.get_running_loop()
        call = _Call(feed, rows)
        call.loop, call.future = loop, loop.create_future()
        with self._lock:
            self._queue.push(call, rows, deadline, time.monotonic(), self.model.batch_shape(feed))
            batch = self._next_batch()
        while True:
            if batch is not None:
                self.pool.submit(self._drain, batch)
                batch = None
            timeout = None
            with self._lock:
                if call.done:
                    break
                if not call.taken:
                    batch, timeout = self._next_or_wait()
            if batch is not None:
                continue
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(call.future)
            except TimeoutError:
                pass  # a flush time came: decide again
        return call.result()

    # -- batches ----------------------------------------------------------------------------------

    def _next_batch(self) -> list[_Call] | None:
        """Under the lock: the calls to run now, per the policy, or None."""
        batch, _ = self._next_or_wait()
        return batch

    def _next_or_wait(self) -> tuple[list[_Call] | None, float | None]:
        """Under the lock: a batch to run now, or how long to wait before asking again (None: until woken)."""
        if not len(self._queue):
            return None, None
        step = self._queue.decide(time.monotonic(), self._inflight, self._service_s)
        if isinstance(step, Flush):
            batch = [p.item for p in self._queue.take(step.count)]
            for call in batch:
                call.taken = True
            self._inflight += 1
            return batch, None
        if step.until is None:
            return None, None
        return None, max(step.until - time.monotonic(), 0.0)

    def _drain(self, batch: list[_Call] | None) -> None:
        """A pool thread: run ``batch``, then whatever became due meanwhile."""
        while batch is not None:
            self._execute(batch)
            with self._lock:
                batch = self._next_batch()

    def _run_alone(self, model: LocalModel, feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """One call on an idle lane (its run already counted in flight), in the caller's thread; then the
        calls that queued meanwhile go to a pool thread."""
        try:
            outputs, elapsed_ms = _run(model, feed)
            self._service_s = elapsed_ms / 1000
            self.observe(model.name, rows, elapsed_ms)
            return outputs
        except (BadRequest, HubFailed):
            raise
        except Exception as exc:
            raise HubFailed(f"local onnxruntime failed on {model.name!r}: {exc}") from exc
        finally:
            with self._lock:
                self._inflight -= 1
                batch = self._next_batch() if self._queue.rows else None
            if batch is not None:
                self.pool.submit(self._drain, batch)

    def _execute(self, batch: list[_Call]) -> None:
        model = self.model  # a swap mid-run does not change the session this batch runs on
        try:
            if len(batch) == 1:
                feed = batch[0].feed
            else:
                feed = {name: np.concatenate([c.feed[name] for c in batch]) for name in batch[0].feed}
            rows = sum(c.rows for c in batch)
            outputs, elapsed_ms = _run(model, feed)
            if len(batch) == 1:
                batch[0].outputs = outputs
            elif not model.batching:
                raise HubFailed(f"model {model.name!r} does not batch, yet {len(batch)} calls ran together")
            else:
                offset = 0
                for call in batch:
                    call.outputs = {n: a[offset : offset + call.rows] for n, a in outputs.items()}
                    offset += call.rows
            self._service_s = elapsed_ms / 1000
            self.observe(model.name, rows, elapsed_ms)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, BadRequest | HubFailed)
                else HubFailed(f"local onnxruntime failed on {model.name!r}: {exc}")
            )
            for call in batch:
                if call.outputs is None:
                    call.error = error
        finally:
            with self._lock:
                self._inflight -= 1
            for call in batch:
                call.finish()


def _run(model: LocalModel, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """One ONNX Runtime run of ``feed``: its outputs by name (string tensors as bytes) and its ms."""
    started = time.perf_counter()
    if model.direct:
        try:
            # The wrapper re-creates ``_sess`` when it falls back to other providers: look it up per run.
            results = model.session._sess.run(model.output_names, feed, None)
        except EPFail:
            results = model.session.run(model.output_names, feed)  # the wrapper's provider fallback, as before
    else:
        results = model.session.run(model.output_names, feed)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if model.strings:
        outputs = {
            n: bytes_elements(r) if r.dtype.kind == "O" else r for n, r in zip(model.output_names, results, strict=True)
        }
    else:
        outputs = dict(zip(model.output_names, results, strict=True))
    return outputs, elapsed_ms
