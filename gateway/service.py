"""The inference service: every check, bill and count an inference call gets, once, for every front.

A front (``fronts/http.py`` today, gRPC next) only decodes and encodes. In between it calls this,
in two steps, so the admission that needs no body runs before the body is read:

    ticket = service.admit(call, model, version)   # draining? key, model, version, route, priority
    ...the front reads and decodes the body...
    served = await service.infer(ticket, request)  # budget, deadline, validation, quota, pipeline, bill

(``answer`` does both for a front that has the whole request at once.) Errors are
``RailgateError``s; a front maps them to its protocol and reports them with ``record_failure``.
No aiohttp here: the service sees a ``Call`` and protocol value objects, never a socket.

The daily quota charges what was answered: ``infer`` reserves the rows at admission (so concurrent
calls cannot overrun it) and gives them back when the call fails or is cancelled. An answered call is
billed (``state.bill``: its usage row committed, with its batch) before its reply is returned.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import call as calls
from gateway.call import Call
from gateway.config import Deadlines, Limits, Priority
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Slot
from gateway.routing.policy import POLICIES, Route
from gateway.routing.router import Router
from gateway.state.local import LocalState
from gateway.statistics import Statistics
from gateway.tenants import Tenant, Tenants
from railcore.catalog import ModelInfo
from railcore.errors import DeadlineExceeded, Draining, Forbidden, PayloadTooLarge, RailgateError
from railcore.protocol.types import InferRequest, InferResponse, Tensor

if TYPE_CHECKING:
    from gateway.state.fleet import FleetState

# The model label of a call to a name the catalog does not hold: a label never takes a value a client
# chose freely (each distinct one is a new series in /metrics, kept for the process's life).
UNKNOWN_MODEL = "(unknown)"
# A call that names no regions and has no residency: its route, one per policy (a route is immutable).
_ANYWHERE = {policy: Route(policy) for policy in POLICIES}


# Ticket and Served are built on every call and never changed, but not frozen: a frozen dataclass's
# __init__ sets each field through object.__setattr__, about four times the cost of a plain one.
@dataclass(slots=True)
class Ticket:
    """An admitted call: who it is for, what it runs, and how it is routed; the body is still unread."""

    call: Call
    info: ModelInfo
    version: str  # as asked ("" for the latest)
    route: Route
    priority: Priority
    tenant: Tenant | None
    # The arrival on the router's clock (high resolution): the end-to-end latency counts from here.
    started: float = 0.0
    # Counted as in progress from admission, while the body is still being read, until it is answered.
    slot: Slot | None = None

    def release(self) -> None:
        """Stop counting the call as in progress (idempotent: every exit path of a front calls it)."""
        if self.slot is not None:
            self.slot.release()


@dataclass(slots=True)
class Served:
    """The answer to one call and the reply headers that describe it (backend, batch, timings)."""

    response: InferResponse
    headers: dict[str, str]


class InferenceService:
    """Admission, tenancy, billing and metrics around ``Pipeline.submit``; protocol-neutral."""

    def __init__(
        self,
        router: Router,
        pipeline: Pipeline,
        tenants: Tenants,
        metrics: Metrics,
        *,
        limits: Limits,
        deadlines: Deadlines,
        default_policy: str,
        statistics: Statistics | None = None,
        state: LocalState | FleetState | None = None,
    ) -> None:
        self.router = router
        # Limits, quotas and billing (gateway/state): this process's own, or the fleet's in Redis.
        self.state = state if state is not None else LocalState(tenants, None)
        self.statistics = statistics or Statistics()
        self.pipeline = pipeline
        self.tenants = tenants
        self.metrics = metrics
        self.limits = limits
        self.deadlines = deadlines
        self.default_policy = default_policy
        # An answered call's series, by (model, backend): both come from the catalog and the hub table, never from
        # a client, so this holds at most one entry per served pair, looked up once instead of twice per call.
        self._answered: dict[tuple[str, str], tuple[Any, Any]] = {}
        # Set late in a graceful drain: new calls are refused (503, Retry-After) until the listener closes.
        self.refusing = False

    def admit(self, call: Call, model: str, version: str) -> Ticket:
        """Everything checked before the body: drain, key, declared size, model and version, the
        tenant's models, route and residency, priority. Raises the first failure found."""
        if self.refusing:
            raise Draining("gateway is shutting down; retry on another instance", headers={"Retry-After": "1"})
        tenants = self.tenants
        tenant = tenants.authenticate(call.authorization) if tenants.enabled else None
        limit = self.limits.max_body_bytes
        if call.body_bytes is not None and call.body_bytes > limit:
            raise PayloadTooLarge(f"body of {call.body_bytes} bytes is over the limit of {limit} bytes")
        info = self.router.model(model)
        info.check_version(version)
        if tenant is not None:
            tenants.check_model(tenant, info.name)
        route = self._route(call, tenant)
        priority = calls.priority(call.priority, tenant.spec.priority if tenant else "normal")
        return Ticket(call, info, version, route, priority, tenant, self._started(call), self.pipeline.hold(priority))

    def _started(self, call: Call) -> float:
        """The call's arrival on the router's clock. A front stamps ``arrived`` on the loop's clock
        (the deadline's), which moves in 1 ms steps under uvloop: only the short span from arrival to
        admission is taken on it, so a latency is not rounded to whole milliseconds."""
        since_arrival = asyncio.get_running_loop().time() - call.arrived
        return self.router.clock() - max(since_arrival, 0.0)

    def _route(self, call: Call, tenant: Tenant | None) -> Route:
        """The call's policy and regions, within the tenant's residency: a call may narrow it, never widen it."""
        policy = calls.route_policy(call.policy, self.default_policy)
        regions = calls.allowed_regions(call.regions)
        if tenant is not None and tenant.spec.regions:
            allowed = frozenset(tenant.spec.regions)
            if regions is not None and not regions <= allowed:
                outside = ", ".join(sorted(regions - allowed))
                raise Forbidden(
                    f"tenant {tenant.name!r} may not use region(s) {outside}; its residency is {sorted(allowed)}"
                )
            regions = regions or allowed
        elif regions is not None:
            calls.require_known_regions(regions, self.router.regions())
        if regions is None:  # the common call: one Route per policy, not one per call
            return _ANYWHERE[policy]
        return Route(policy, regions)

    async def infer(self, ticket: Ticket, request: InferRequest) -> Served:
        """Run an admitted, decoded request: budget, deadline, validation and quota, then the pipeline;
        the usage is billed to the tenant and the answer counted. The ticket's slot is released."""
        try:
            return await self._infer(ticket, request)
        finally:
            ticket.release()

    async def _infer(self, ticket: Ticket, request: InferRequest) -> Served:
        loop = asyncio.get_running_loop()
        call, info, tenant = ticket.call, ticket.info, ticket.tenant
        budget_s = calls.budget_s(call.budget_ms, request.parameters.get("timeout"), self.deadlines)
        if call.transport_budget_s is not None:
            budget_s = min(budget_s, call.transport_budget_s)
        deadline = call.arrived + budget_s
        # ``arrived`` is on ``calls.arrival``'s clock (the monotonic one, up to a uvloop step ahead of the
        # loop's): read now on the same clock, and a budget of 0 (a gRPC deadline already past) is spent.
        if budget_s <= 0.0 or calls.arrival(loop) >= deadline:
            raise DeadlineExceeded("latency budget already spent on arrival; the request was not sent to a backend")
        rows = info.validate(request, text_bytes=self.limits.bytes_must_be_utf8)
        if tenant is not None:
            leasing = self.state.admit(tenant, info.name, rows)  # reserves the rows against today's quota ...
            if leasing is not None:  # this process ran dry of its lease of the fleet's limits
                await leasing
        billing = False
        try:
            result = await self.pipeline.submit(
                request,
                info,
                rows,
                deadline,
                gone=call.gone,
                route=ticket.route,
                priority=ticket.priority,
                slot=ticket.slot,
                trace=call.trace,
            )
            if tenant is not None:
                backend = self.router.backend(result.backend)
                price = self.router.price_now(backend, info.name) if backend is not None else 0.0
                billing = True  # from here the row is written even if this call is cancelled
                await self.state.bill(tenant, info.name, result.backend, rows, price, request.id or "")
        except asyncio.CancelledError:
            if tenant is not None and not billing:
                self.state.release(tenant, rows)
            raise
        except BaseException:  # ... and a call that is not answered (failed, unbilled) gives them back
            if tenant is not None:
                self.state.release(tenant, rows)
            raise
        datatypes = info.output_datatypes
        names = [o.name for o in request.outputs] if request.outputs else datatypes
        outputs = [Tensor(n, datatypes[n], result.outputs[n].shape, result.outputs[n]) for n in names]
        response = InferResponse(info.name, ticket.version or info.versions[-1], outputs, id=request.id)
        metrics = self.metrics
        series = self._answered.get((info.name, result.backend))
        if series is None:
            series = self._answered[(info.name, result.backend)] = (
                metrics.requests.labels(info.name, "200", result.backend),
                metrics.latency.labels(info.name),
            )
        series[0].inc()
        elapsed = self.router.clock() - ticket.started
        series[1].observe(elapsed)
        self.statistics.answered(
            response.model_name, response.model_version, rows, elapsed, result.queue_s, result.backend_s
        )
        if tenant is not None:
            metrics.tenant_inferences.labels(tenant.name, info.name).inc(rows)
            metrics.tenant_spend.labels(tenant.name).inc(price * rows / 1000)
        headers = {
            "X-Served-By": result.backend,
            "X-Batch-Size": str(result.batch_size),
            "X-Route-Reason": result.route_reason,
            "X-Queue-Ms": f"{result.queue_s * 1000:.3f}",
            "X-Backend-Ms": f"{result.backend_s * 1000:.3f}",
        }
        return Served(response, headers)

    async def answer(self, call: Call, request: InferRequest) -> Served:
        """``admit`` then ``infer``, for a front whose request arrives whole (decoded with its model)."""
        return await self.infer(self.admit(call, request.model, request.version), request)

    def record_failure(self, model: str, error: RailgateError, call: Call | None = None) -> None:
        """Count a call that ended in ``error`` (the front calls this for its own errors too: body, decode)."""
        backend = error.headers.get("X-Served-By", "none")  # set by the gateway, never by the client
        info = self.router.catalog.get(model)
        self.metrics.requests.labels(info.name if info else UNKNOWN_MODEL, str(error.status), backend).inc()
        if info is not None and call is not None:  # only served models are counted, never a client's name
            self.statistics.failed(
                info.name, info.versions[-1], max(asyncio.get_running_loop().time() - call.arrived, 0.0)
            )
