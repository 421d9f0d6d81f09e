"""``EdgeRuntime``: the on-device runtime that firmware calls, in Python or over edge/server.py.

Which API is primary: both, each for the path it is natural to.
  * The local path is synchronous at its core. ONNX Runtime's ``run`` is a blocking call, and running
    it in the caller's own thread is the cheapest way there is: ``infer_sync`` (what firmware-side
    Python calls) runs a local call inline, no hand-off, no event loop, microseconds over a bare
    ``InferenceSession.run``. Concurrent callers are combined into batches (``engine.MicroBatcher``).
  * The remote path is asynchronous at its core: aiohttp on the runtime's event loop, which also owns
    the gateway probe and the periodic model sync. ``infer`` (async) awaits it directly and runs local
    calls in the runtime's thread pool, never on the loop; ``infer_sync`` hands remote calls to the loop
    and cuts them with its own timed wait.

Start it on your own loop (``await rt.start()`` or ``async with``), or let it run a loop in a thread of
its own (``rt.start_sync()`` or ``with``). Each call: validate the inputs against the local model, ask
the pure ``offload.decide`` where to run it, run it there. A remote call is cut early enough for a
local run to still fit the budget, and falls back to local when it fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import POLICIES, EdgeConfig
from edge.engine import LocalModel
from edge.errors import EdgeError, ModelRefused, ModelUnavailable
from edge.link import GatewayLink
from edge.local import LocalModels
from edge.metrics import UNKNOWN_MODEL, EdgeMetrics
from edge.offload import LOCAL, NONE, REMOTE, Link, OffloadPolicy, decide
from edge.offloading import Offload, Plan
from edge.remote import GatewayRejected, RemoteFailed
from edge.store import ModelStore, VerifiedModel
from edge.sync import SyncOutcome, sync_models
from edge.tracing import call_span, decided
from railcore.catalog import ModelInfo
from railcore.errors import BadRequest, ModelNotFound, RailgateError
from railcore.onnx import choose_providers
from railcore.signing import TrustedKeys
from railcore.tracing import end_span, start_tracing

log = logging.getLogger("railgate.edge")
_POLICIES = frozenset(POLICIES)


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, ~1.3 us more per
# call here, and one is built per call. Treat it as read-only.
@dataclass(slots=True)
class EdgeResult:
    """One call's outputs and how it was served (read-only by convention)."""

    outputs: dict[str, np.ndarray]
    served_by: str  # "local" (this device), or the gateway's X-Served-By (a hub's name, or the gateway's "local")
    reason: str  # the offload reason (offload.REASONS)
    latency_ms: float  # inside the runtime, call to result
    offloaded: bool = False  # True when the gateway answered (served_by alone cannot tell: the gateway has a "local")


class EdgeRuntime:
    """Runs models on the device with ONNX Runtime, or offloads calls to the gateway when that fits the budget."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.metrics = EdgeMetrics()
        self.store = ModelStore(Path(config.repository))
        self._trusted = TrustedKeys.parse(config.sync.trusted_keys)  # the keys a model's manifest must be signed by
        workers = config.batching.max_concurrent_runs + 2
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="railgate-edge-ort")
        self.local = LocalModels(config, self.store, self._pool, self.metrics)
        self.link = GatewayLink(config.gateway_url, config, self.metrics) if config.gateway_url else None
        # OpenTelemetry (None when tracing.otlp_endpoint is unset: calls then build no span at all).
        self.tracing = start_tracing(config.tracing, "railgate-edge")
        self._tracer = self.tracing.tracer if self.tracing is not None else None
        self.offload = Offload(self.link, self.metrics, self._tracer)
        self._lanes = self.local.lanes  # the hot path reads it directly
        self._predict = self.local.predictor.predict
        self._refused = self.local.refused
        self._remote_info: dict[str, ModelInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._own_thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Label children cached per label tuple: ``labels()`` takes a lock and builds a key on every call.
        self._served_children: dict[tuple[str, str], Any] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}
        # Names that may label metrics: configured, on the device (lanes, refused) or answered by the gateway.
        # Any other name a client sends is counted as UNKNOWN_MODEL: no label value per client-chosen string.
        self._named: set[str] = set(config.models)
        self._inline_ms = config.batching.inline_max_ms

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and verify the local models, open the gateway link, sync once, start probe and sync timers."""
        if self._loop is not None:
            raise RuntimeError("EdgeRuntime already started")
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        try:
            self.local.providers = choose_providers(self.config.providers)
            names = self.config.models or tuple(self.store.names())
            await loop.run_in_executor(self._pool, self.local.load_all, names)
            if self.link is not None:
                await self.link.start()
                syncing = self.config.sync.enabled and bool(self.config.models)
                if syncing and not self._trusted:
                    log.warning(
                        "event=sync_unsigned detail=no sync.trusted_keys: model updates are checked against the "
                        "sha256 the gateway declares, without a signature"
                    )
                if syncing:
                    await self.sync_now()
                if self.config.probe_interval_s > 0:
                    await self.link.probe()
                    self._spawn(self.link.probe_forever(), "edge-probe")
                if syncing and self.config.sync.interval_s > 0:
                    self._spawn(self._sync_forever(), "edge-sync")
        except BaseException:
            await self.close()
            raise
        log.info("event=edge_ready %s", self.describe())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.link is not None:
            await self.link.close()
        if self._loop is not None:
            await self._loop.run_in_executor(None, self._pool.shutdown)
            if self.tracing is not None:  # the last spans are exported (blocking: off the loop)
                await self._loop.run_in_executor(None, self.tracing.shutdown)
        self._loop = None
        self._loop_thread_id = None

    def start_sync(self, timeout_s: float = 300.0) -> EdgeRuntime:
        """Start on an event loop of the runtime's own, in a thread (for callers without a loop)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="railgate-edge-loop", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout_s)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._own_thread = thread
        return self

    def close_sync(self) -> None:
        thread, self._own_thread = self._own_thread, None
        loop = self._loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> EdgeRuntime:
        return self.start_sync()

    def __exit__(self, *exc: object) -> None:
        self.close_sync()

    async def __aenter__(self) -> EdgeRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        assert self._loop is not None
        self._tasks.add(self._loop.create_task(coroutine, name=name))

    # -- calls ------------------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        budget_ms: float | None = None,
        policy: str | None = None,
        *,
        version: str = "",
        headers: dict[str, str] | None = None,
    ) -> EdgeResult:
        """Run one call (every input with its batch dimension first). Await on the runtime's event loop.

        ``headers`` go with a remote call to the gateway (e.g. ``X-Route-Policy``, ``Authorization``).
        """
        started = time.perf_counter()
        if self._loop is None:
            raise RuntimeError("EdgeRuntime is not started: await start() (or use `async with`) first")
        span = None if self._tracer is None else call_span(self._tracer, model, headers)
        try:
            plan = self._plan(model, inputs, budget_ms, policy, version, headers)
            if span is not None:
                self._decided(span, plan, model)
            reason = plan.decision.reason
            if plan.decision.where is REMOTE:
                timeout_s = self.offload.window(model, plan)
                if timeout_s is None:
                    reason = self.offload.fallback(model, "remote_timeout")
                else:
                    reply, reason = await self.offload.call(model, version, inputs, plan, headers, timeout_s)
                    if reply is not None:
                        return self._served(model, reply.outputs, reply.served_by, reason, started, REMOTE)
            assert plan.lane is not None and plan.feed is not None
            inline = plan.local_ms is not None and plan.local_ms <= self._inline_ms
            outputs = await plan.lane.run_async(plan.feed, plan.rows, plan.deadline, inline)
            return self._served(model, outputs, LOCAL, reason, started, LOCAL)
        except RailgateError as exc:
            self.metrics.calls.labels(self._label(model), NONE, str(exc.status)).inc()
            raise
        finally:
            if span is not None:
                end_span(span, sys.exc_info()[1])

    def infer_sync(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        budget_ms: float | None = None,
        policy: str | None = None,
        *,
        version: str = "",
        headers: dict[str, str] | None = None,
    ) -> EdgeResult:
        """``infer`` for plain threads: a local call runs inline in this thread. Never call it on the event loop."""
        started = time.perf_counter()
        loop = self._loop
        if loop is None:
            raise RuntimeError("EdgeRuntime is not started: use `with EdgeRuntime(config) as rt` or start_sync()")
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError("infer_sync() called on the runtime's event loop; use `await infer()` there")
        span = None if self._tracer is None else call_span(self._tracer, model, headers)
        try:
            plan = self._plan(model, inputs, budget_ms, policy, version, headers)
            if span is not None:
                self._decided(span, plan, model)
            reason = plan.decision.reason
            if plan.decision.where is REMOTE:
                reply, reason = self.offload.call_from_thread(loop, model, version, inputs, plan, headers)
                if reply is not None:
                    return self._served(model, reply.outputs, reply.served_by, reason, started, REMOTE)
            assert plan.lane is not None and plan.feed is not None
            outputs = plan.lane.run(plan.feed, plan.rows, plan.deadline)
            return self._served(model, outputs, LOCAL, reason, started, LOCAL)
        except RailgateError as exc:
            self.metrics.calls.labels(self._label(model), NONE, str(exc.status)).inc()
            raise
        finally:
            if span is not None:
                end_span(span, sys.exc_info()[1])

    def _decided(self, span: Any, plan: Plan, model: str) -> None:
        """The decision on the call's span; the plan carries the span to the remote call."""
        remote_ms = None if self.link is None else self.link.view(model)[1]
        decided(span, plan.decision.where, plan.decision.reason, plan.budget_s * 1000, plan.local_ms, remote_ms)
        plan.trace = span

    def _plan(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        budget_ms: float | None,
        policy: str | None,
        version: str,
        headers: dict[str, str] | None = None,
    ) -> Plan:
        config = self.config
        if policy is None:
            policy = config.policy  # checked when the config was read
        elif policy not in _POLICIES:
            raise BadRequest(f"offload policy {policy!r} is not one of {', '.join(POLICIES)}")
        if budget_ms is None:
            budget_ms = config.budget_ms
        elif not (budget_ms >= 0 and math.isfinite(budget_ms)):
            raise BadRequest(f"budget must be a non-negative number of milliseconds, got {budget_ms!r}")
        now = time.monotonic()
        lane = self._lanes.get(model)
        if lane is not None and version and version != lane.model.version:
            lane = None  # the device holds another version: only the gateway can serve this one
        outside = self._outside_residency(headers) if headers else None
        if outside is not None:
            lane = None  # residency: only the gateway, within the call's regions, may serve it
        feed, rows, local_ms = None, 1, None
        if lane is not None:
            feed, rows = lane.model.prepare(inputs)
            local_ms = self._predict(model, rows) or 0.0
        link = self.link
        state, remote_ms, rtt_ms = (Link.NONE, None, None) if link is None else link.view(model)
        decision = decide(
            policy=policy, budget_ms=budget_ms, local_ms=local_ms, remote_ms=remote_ms, rtt_ms=rtt_ms, link=state,
            prefer_local=config.prefer_local,
        )  # fmt: skip
        ticket = None
        if decision.where == REMOTE and link is not None:
            ticket = link.admit()
            if ticket is None:
                # Another call took the half-open trial first: decide this one as if the circuit were open.
                decision = decide(
                    policy=policy, budget_ms=budget_ms, local_ms=local_ms, remote_ms=remote_ms, rtt_ms=rtt_ms,
                    link=Link.DOWN, prefer_local=config.prefer_local,
                )  # fmt: skip
        label = model if lane is not None else self._label(model)
        counted = self._decision_children.get((label, decision.reason))
        if counted is None:  # a reason names where the call goes: (label, reason) stands for the label tuple
            counted = self._decision_children[(label, decision.reason)] = self.metrics.decisions.labels(
                label, decision.where, decision.reason
            )
        counted.inc()
        if decision.where is NONE:
            raise self._unavailable(model, policy, outside)
        return Plan(decision, lane, feed, rows, now + budget_ms / 1000, budget_ms / 1000, local_ms, ticket, outside)

    def _label(self, model: str) -> str:
        """``model`` as a metric label: its name if the device or the gateway knows it, else UNKNOWN_MODEL."""
        if model in self._named or model in self._lanes or model in self._refused:
            return model
        return UNKNOWN_MODEL

    def _outside_residency(self, headers: dict[str, str] | None) -> str | None:
        """Why the call's allowed regions (X-Allowed-Regions) leave out the device, or None if they do not."""
        text = next((v for k, v in (headers or {}).items() if k.lower() == "x-allowed-regions"), None)
        if text is None:
            return None
        allowed = {r.strip() for r in text.split(",")}
        if self.config.region in allowed:
            return None
        return f"region {self.config.region} is outside the call's allowed regions [{', '.join(sorted(allowed))}]"

    def _served(
        self, model: str, outputs: dict[str, np.ndarray], served_by: str, reason: str, started: float, path: str
    ) -> EdgeResult:
        latency_s = time.perf_counter() - started
        latency = self._served_children.get((model, path))
        if latency is None:
            self._named.add(model)  # served: the device holds it, or the gateway answered for it
            latency = self._served_children[(model, path)] = self.metrics.latency.labels(model, path)
            # Calls answered 200 are the latency histogram's count: one update per call, not two.
            self.metrics.calls.count_of(latency, model, path, "200")
        latency.observe(latency_s)
        return EdgeResult(outputs, served_by, reason, latency_s * 1000, path == REMOTE)

    def _unavailable(self, model: str, policy: str, outside: str | None = None) -> EdgeError:
        """Why a call has nowhere to run: ModelRefused when the local copy failed verification."""
        why = self._refused.get(model)
        error = ModelRefused if why and not outside else ModelUnavailable
        if outside:
            base = f"model {model!r} may not run on this device ({outside})"
        elif why:
            base = f"model {model!r} cannot run on this device ({why})"
        else:
            base = f"model {model!r} is not on this device"
        if policy == OffloadPolicy.LOCAL:
            return error(f"{base}, and policy 'local' keeps it off the gateway")
        if self.link is None:
            return error(f"{base}, and no gateway is configured (gateway_url)")
        return error(
            f"{base}, and the gateway {self.link.url} is unreachable (circuit open; next try in "
            f"{self.link.retry_in_s():.1f} s)"
        )

    # -- model sync -------------------------------------------------------------------------------

    async def _prepare(self, verified: VerifiedModel) -> Callable[[], None]:
        """Sync's first phase: build and warm up the new version's session, off the loop."""
        assert self._loop is not None
        model, warm_ms = await self._loop.run_in_executor(self._pool, self.local.build, verified)
        return lambda: self.local.install(model, warm_ms)

    async def sync_now(self) -> list[SyncOutcome]:
        """Pull ``config.models`` from the gateway; an updated model is swapped in once loaded."""
        if self.link is None or self.link.client.session is None or not self.config.models:
            return []
        current = {name: lane.model.sha256 for name, lane in self._lanes.items()}
        outcomes = await sync_models(
            self.link.client.session,
            self.link.client.base_url,  # the URL the session dials (it names gateway_tls.server_name if set)
            self.store,
            self.config.models,
            timeout_s=self.config.sync.timeout_s,
            current=current,
            prepare=self._prepare,
            trusted=self._trusted,
        )
        for o in outcomes:
            self.metrics.syncs.labels(o.model, o.outcome).inc()
            if o.reason is not None:
                self.metrics.sync_refusals.labels(o.model, o.reason).inc()
            if o.outcome in ("refused", "failed"):
                log.warning("event=sync_%s model=%s detail=%s", o.outcome, o.model, o.detail)
                if o.model not in self._lanes and o.outcome == "refused":
                    self._refused[o.model] = f"last sync refused: {o.detail}"
            elif o.outcome == "updated":
                log.info("event=model_updated model=%s sha256=%s detail=%s", o.model, o.sha256, o.detail)
        return outcomes

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync.interval_s)  # the sync period itself, not a synchronisation
            try:
                await self.sync_now()
            except Exception:
                log.exception("event=sync_crashed")

    # -- state ------------------------------------------------------------------------------------

    def local_model(self, name: str) -> LocalModel | None:
        """The version of ``name`` in service on the device, if any."""
        lane = self._lanes.get(name)
        return lane.model if lane is not None else None

    def local_models(self) -> dict[str, LocalModel]:
        """The models in service on the device now."""
        return {name: lane.model for name, lane in self._lanes.items()}

    def refused(self) -> dict[str, str]:
        """Models that cannot run on the device, and why."""
        return dict(self._refused)

    @property
    def gateway_state(self) -> str:
        """``none`` (no gateway configured), ``up``, ``half-open`` or ``down``."""
        return "none" if self.link is None else self.link.state

    def ready(self) -> bool:
        return bool(self._lanes) or self.gateway_state == "up"

    def model_ready(self, model: str) -> bool:
        return model in self._lanes or self.gateway_state == "up"

    async def model_info(self, model: str) -> ModelInfo:
        """The model's metadata: the local copy's, else the gateway's (cached)."""
        local = self.local_model(model)
        if local is not None:
            return local.info
        cached = self._remote_info.get(model)
        if cached is not None:
            return cached
        if self.link is None or self.link.state == "down":
            if model in self._refused:
                raise self._unavailable(model, "auto")
            raise ModelNotFound(f"model {model!r} is not on this device, and no gateway can be asked about it")
        try:
            info = await self.link.model_info(model)
        except GatewayRejected as exc:
            raise ModelNotFound(
                f"model {model!r} is neither on this device nor served by the gateway ({exc})"
            ) from None
        except RemoteFailed:
            raise self._unavailable(model, "auto") from None
        self._remote_info[model] = info
        return info

    def describe(self) -> str:
        local = ",".join(f"{n}({m.sha256[:12]})" for n, m in sorted(self.local_models().items())) or "none"
        refused = ",".join(sorted(self._refused)) or "none"
        gateway = f"{self.link.url}({self.link.state})" if self.link is not None else "none"
        return f"local={local} refused={refused} gateway={gateway} providers={','.join(self.providers)}"

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions run on."""
        return self.local.providers
