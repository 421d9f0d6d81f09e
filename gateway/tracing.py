"""The gateway's spans, built only when tracing is on (``tracing.otlp_endpoint``; railcore/tracing.py).

One inference call's trace, as the gateway records it:

    request (SERVER: the HTTP or gRPC call, the caller's traceparent its parent)
      queue wait (from the call's arrival in its lane's queue to its batch being taken)
      batch (the first sampled member's child; linked to every sampled member's request span)
        hub call (CLIENT; traceparent sent to Triton) | local run: one per attempt, failovers and
        hedges included (``railgate.attempt``: first | failover | hedge; a cancelled hedge loser
        says ``railgate.cancelled``)

A batch serves many requests from many traces, so it has one parent and links to the rest (the
OpenTelemetry way to say "one operation for many callers"). The hooks in the fronts, the pipeline
and the forwarder each check their tracer (or the batch's trace) against None once; with tracing
off none of this runs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan

from railcore.errors import RailgateError
from railcore.tracing import Span, SpanKind, Tracer, context_of, end_span, failed, parent_context

if TYPE_CHECKING:
    from gateway.lanes import Admitted
    from gateway.routing.router import Selection
    from railcore.batching import Pending

# The aiohttp request key of the request's span (set by the middleware, read by the infer handler).
REQUEST_SPAN: web.RequestKey[Span] = web.RequestKey("railgate_span", Span)  # type: ignore[type-abstract]


def request_span(tracer: Tracer, carrier: Mapping[str, Any], name: str, attributes: dict[str, Any]) -> Span:
    """The server span of one call, a child of the caller's W3C context (headers or gRPC metadata) if it
    sent a well-formed one."""
    return tracer.start_span(name, context=parent_context(carrier), kind=SpanKind.SERVER, attributes=attributes)


def http_middleware(tracer: Tracer, traced: Callable[[web.Request], bool]) -> Any:
    """An aiohttp middleware giving each request ``traced`` picks a server span (outermost, so the span
    sees the status the error middleware answered). Installed only when tracing is on."""

    @web.middleware
    async def tracing_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if not traced(request):
            return await handler(request)
        model = request.match_info.get("model", "")
        span = request_span(
            tracer,
            request.headers,
            f"{request.method} /v2/models/{{model}}/infer",
            {"http.request.method": request.method, "url.path": request.path[:200], "railgate.model": model[:100]},
        )
        request[REQUEST_SPAN] = span
        try:
            response = await handler(request)
        except BaseException as exc:
            if isinstance(exc, web.HTTPException):
                span.set_attribute("http.response.status_code", exc.status)
            end_span(span, exc)
            raise
        status = response.status
        span.set_attribute("http.response.status_code", status)
        served_by = response.headers.get("X-Served-By")
        if served_by is not None:
            span.set_attribute("railgate.served_by", served_by)
        if status >= 500:  # a 4xx is the caller's error, not the server's (OpenTelemetry's HTTP conventions)
            failed(span, RailgateError(f"answered {status}"))
        span.end()
        return response

    return tracing_middleware


def grpc_request_span(tracer: Tracer, metadata: Mapping[str, str], method: str, model: str) -> Span:
    return request_span(
        tracer,
        metadata,
        f"inference.GRPCInferenceService/{method}",
        {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": method,
         "railgate.model": model[:100]},
    )  # fmt: skip


def end_request_span(span: Span, error: BaseException | None) -> None:
    """End a request span with the call's outcome (a RailgateError by its HTTP status: 4xx is the
    caller's, not a failure of the server)."""
    if isinstance(error, RailgateError):
        span.set_attribute("railgate.status", error.status)
        if error.status < 500:
            span.set_attribute("error.type", type(error).__name__)
            span.end()
            return
    end_span(span, error)


@dataclass(slots=True)
class BatchTrace:
    """A batch's span and what its backend calls need to be its children."""

    tracer: Tracer
    span: Span
    context: Context
    recording: bool = True  # False: no member was sampled, and ``span`` is the first member's (not recorded)

    def backend_call(self, selection: Selection, model: str, rows: int) -> Span:
        """The span of one backend call for this batch (a hub call, or a run on the local backend). In a
        batch no member of which is sampled, the first member's unrecorded span: its context (flagged
        not sampled) still goes to the hub, and no span is started for nothing."""
        if not self.recording:
            return self.span
        backend = selection.backend
        reason = selection.reason
        attempt = "hedge" if reason.startswith("hedge") else "failover" if reason.startswith("failover") else "first"
        hub = backend.kind == "hub"
        return self.tracer.start_span(
            "railgate.hub_call" if hub else "railgate.local_run",
            context=self.context,
            kind=SpanKind.CLIENT if hub else SpanKind.INTERNAL,
            attributes={
                "railgate.backend": backend.name,
                "railgate.backend.kind": str(backend.kind),
                "railgate.region": backend.region,
                "railgate.attempt": attempt,
                "railgate.route_reason": reason,
                "railgate.model": model,
                "railgate.batch.rows": rows,
            },
        )

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        self.span.add_event(name, attributes)

    def failed(self, error: BaseException) -> None:
        failed(self.span, error)

    def end(self, error: BaseException | None) -> None:
        end_span(self.span, error)


def batch_trace(
    tracer: Tracer, model: str, version: str, batch: list[Pending[Admitted]], rows: int
) -> BatchTrace | None:
    """Each traced member's queue-wait span (ending now) and the batch's span; None when no member is
    traced. The batch is the child of its first sampled member (else its first traced one, so an
    unsampled caller's decision still reaches the hub) and linked to every sampled member."""
    now = time.time_ns()
    parent: Span | None = None
    sampled: Span | None = None
    links = []
    for pending in batch:
        span = pending.item.trace
        if span is None:
            continue
        if parent is None:
            parent = span
        if span.is_recording():
            if sampled is None:
                sampled = span
            links.append(Link(span.get_span_context()))
            wait = tracer.start_span("railgate.queue_wait", context=context_of(span), start_time=pending.item.queued_ns)
            wait.end(end_time=now)
    if sampled is None:
        # Nothing here is recorded: the unsampled caller's context goes on to the hub as it is (the
        # common case at a low sample_ratio, so it starts no span).
        # (A member's span that has ended, answered 504 meanwhile, is not recording either: a stand-in
        # carries its context, so nothing ends it twice.)
        if parent is None:
            return None
        stand_in = NonRecordingSpan(parent.get_span_context())
        return BatchTrace(tracer, stand_in, context_of(stand_in), recording=False)
    parent = sampled
    span = tracer.start_span(
        "railgate.batch",
        context=context_of(parent),
        links=links,
        start_time=now,
        attributes={
            "railgate.model": model,
            "railgate.model_version": version,
            "railgate.batch.rows": rows,
            "railgate.batch.members": len(batch),
        },
    )
    return BatchTrace(tracer, span, context_of(span))
