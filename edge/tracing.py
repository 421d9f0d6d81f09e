"""The edge runtime's spans, built only when its ``tracing.otlp_endpoint`` is set (railcore/tracing.py).

    edge call (the firmware's traceparent, if it sent one, its parent): the offload decision as
    attributes (``railgate.offload.where``, ``railgate.offload.reason``, the budget and the estimates
    it weighed), a ``fallback`` event when a remote call failed and the device answered
      remote call (CLIENT): the call to the gateway, sent with its traceparent, so the gateway's
      request span is its child

With tracing off the runtime holds ``tracer = None`` and none of this runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from railcore.tracing import Span, SpanKind, Tracer, context_of, headers_for, parent_context


def call_span(tracer: Tracer, model: str, headers: Mapping[str, str] | None) -> Span:
    """The span of one edge call, a child of the W3C context in ``headers`` (any case) if well-formed."""
    carrier = {k.lower(): v for k, v in headers.items()} if headers else {}
    return tracer.start_span(
        "railgate.edge.infer", context=parent_context(carrier), kind=SpanKind.INTERNAL,
        attributes={"railgate.model": model[:100]},
    )  # fmt: skip


def decided(span: Span, where: str, reason: str, budget_ms: float, local_ms: float | None, remote: Any) -> None:
    """The offload decision on the call's span: where it runs and why, and what it weighed."""
    span.set_attribute("railgate.offload.where", where)
    span.set_attribute("railgate.offload.reason", reason)
    span.set_attribute("railgate.budget_ms", budget_ms)
    if local_ms is not None:
        span.set_attribute("railgate.local_ms", local_ms)
    if remote is not None:
        span.set_attribute("railgate.remote_ms", remote)


def remote_span(
    tracer: Tracer, parent: Span, url: str, model: str, headers: dict[str, str] | None, timeout_s: float
) -> tuple[Span, dict[str, str]]:
    """The remote call's span and the headers to send with it (the caller's, plus its traceparent)."""
    span = tracer.start_span(
        "railgate.edge.remote_call", context=context_of(parent), kind=SpanKind.CLIENT,
        attributes={"url.full": url, "railgate.model": model[:100], "railgate.timeout_ms": timeout_s * 1000},
    )  # fmt: skip
    sent = {k: v for k, v in (headers or {}).items() if k.lower() not in ("traceparent", "tracestate")}
    return span, headers_for(span, sent)
