"""The device's link to the gateway: the client, its circuit breaker, the remote latency predictor, probes.

Everything the offload decision needs to know about the gateway comes from here (``view``), and every
outcome of talking to it goes back here: a reply feeds the predictor (the gateway's ``X-Queue-Ms`` and
``X-Backend-Ms``, the round trip from what is left) and closes the circuit; a failure counts against
it. The periodic probe keeps the round-trip estimate fresh when no call goes up and is the half-open
trial when one is due, so no firmware call has to be the one that finds out whether the backbone is back.

Every call up carries the breaker ticket ``admit`` gave it and settles it: a reply closes the circuit,
a failure counts against it by cause, and an outcome that says nothing of the gateway's health (a 401,
403 or 404, or a call never sent) releases it, so a half-open trial always resolves.

The breaker and predictor are touched from callers' threads and the event loop alike: one lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from edge.circuit import CircuitBreaker, CircuitState
from edge.config import EdgeConfig
from edge.metrics import EdgeMetrics
from edge.offload import Link
from edge.predict import RemotePredictor
from edge.remote import GatewayClient, GatewayRejected, RemoteFailed, RemoteReply
from railcore.breaker import Ticket
from railcore.catalog import ModelInfo
from railcore.errors import Cause

log = logging.getLogger("railgate.edge.link")

STATES = {CircuitState.CLOSED: "up", CircuitState.HALF_OPEN: "half-open", CircuitState.OPEN: "down"}


class GatewayLink:
    def __init__(self, url: str, config: EdgeConfig, metrics: EdgeMetrics) -> None:
        self.url = url
        self.client = GatewayClient(url, config.gateway_api_key, tls=config.gateway_tls)
        c = config.circuit
        self.circuit = CircuitBreaker(c.failure_threshold, c.backoff_s, c.max_backoff_s)
        self.predictor = RemotePredictor(stale_s=config.remote_stale_s)
        self.probe_interval_s = config.probe_interval_s
        self.metrics = metrics
        self._lock = threading.Lock()

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    @property
    def state(self) -> str:
        """``up``, ``half-open`` or ``down``."""
        return STATES[self.circuit.state]

    def retry_in_s(self) -> float:
        return self.circuit.retry_in_s()

    def view(self, model: str) -> tuple[Link, float | None, float | None]:
        """What the decision needs: the link's state, the predicted remote ms for ``model``, the round trip ms."""
        with self._lock:
            state = self.circuit.peek()
            if state is Link.DOWN:  # circuit open: the decision reads neither estimate (offload.decide)
                return state, None, None
            return state, self.predictor.predict(model, time.monotonic()), self.predictor.rtt.value

    def admit(self) -> Ticket | None:
        """Claim the right to send a call now (in half-open: the single trial): the call's ticket, or None."""
        with self._lock:
            return self.circuit.admit()

    def release(self, ticket: Ticket | None) -> None:
        """The admitted call was not sent after all: its trial slot, if it held it, is free again."""
        with self._lock:
            self.circuit.release(ticket)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float,
        headers: dict[str, str] | None,
        ticket: Ticket | None = None,
    ) -> RemoteReply:
        """One call, accounted for with ``ticket``. Raises RemoteFailed (already counted) or GatewayRejected."""
        try:
            reply = await self.client.infer(model, version, inputs, timeout_s, headers)
        except RemoteFailed as exc:
            self.failed(model, exc, timeout_s, ticket)
            raise
        except GatewayRejected:
            self._succeeded(None, ticket)  # the gateway answered: the link is fine, the request was not
            raise
        except BaseException:  # cancelled (e.g. its caller's thread gave up on it): says nothing yet
            self.release(ticket)
            raise
        self._succeeded((model, reply), ticket)
        return reply

    def failed(self, model: str, exc: RemoteFailed, timeout_s: float, ticket: Ticket | None = None) -> None:
        """Count a failed or cut call against the circuit, by cause (a refusal that says nothing of the
        gateway's health only frees its ticket); a cut one also tells the predictor it was slow."""
        with self._lock:
            before = self.circuit.state
            if exc.counts:
                self.circuit.record_failure(ticket, exc.cause)
            else:
                self.circuit.release(ticket, exc.cause)
            if exc.timeout:
                self.predictor.observe_cut(model, timeout_s * 1000, time.monotonic())
        self._changed(before)

    def _succeeded(self, sample: tuple[str, RemoteReply] | None, ticket: Ticket | None = None) -> None:
        with self._lock:
            before = self.circuit.state
            self.circuit.record_success(ticket)
            if sample is not None:
                model, reply = sample
                self.predictor.observe(model, reply.total_ms, reply.queue_ms, reply.backend_ms, time.monotonic())
                self.metrics.predicted.labels(model, "remote").set(self.predictor.predict(model, time.monotonic()) or 0)
        self._changed(before)

    async def probe(self) -> None:
        """An RTT sample when the link is up; the half-open trial when one is due; nothing while open."""
        with self._lock:
            ticket = self.circuit.admit()
            if ticket is None:
                return
        try:
            rtt_ms = await self.client.probe(min(max(self.probe_interval_s, 0.2), 2.0))
        except BaseException:
            self.release(ticket)
            raise
        with self._lock:
            before = self.circuit.state
            if rtt_ms is None:
                self.circuit.record_failure(ticket, Cause.UNREACHABLE)
            else:
                self.circuit.record_success(ticket)
                self.predictor.observe_rtt(rtt_ms)
        self._changed(before)

    async def probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)  # the probe period itself, not a synchronisation
            try:
                await self.probe()
            except Exception:
                log.exception("event=probe_crashed gateway=%s", self.url)

    async def model_info(self, model: str) -> ModelInfo:
        return await self.client.model_info(model, timeout_s=2.0)

    def _changed(self, before: CircuitState) -> None:
        after = self.circuit.state
        if after is before:
            return
        self.metrics.circuit.set(after.gauge)
        if after is CircuitState.OPEN:
            log.warning("event=gateway_circuit_open gateway=%s retry_in_s=%.1f", self.url, self.circuit.backoff_s)
        elif after is CircuitState.CLOSED:
            log.info("event=gateway_circuit_closed gateway=%s", self.url)
