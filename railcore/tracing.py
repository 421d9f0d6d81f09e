"""OpenTelemetry tracing, shared by the gateway and the edge runtime: settings, the tracer, W3C context.

Off unless ``tracing.otlp_endpoint`` is set. Then ``start_tracing`` builds a tracer of its own (not
the process-global one: config is passed in) that samples by ``sample_ratio`` under a caller's
decision (parent-based: a ``traceparent`` flagged sampled is always traced, one flagged not never is)
and exports over OTLP/HTTP (protobuf) from a ``BatchSpanProcessor``'s own thread, never the event
loop. Off, ``start_tracing`` returns None and every hot-path site holds ``tracer = None``: it checks
that once (``if tracer is not None``), so a call with tracing off builds no span and parses no header.

The caller's context travels as W3C Trace Context (``traceparent``, ``tracestate``) in HTTP headers
and gRPC metadata (lower-case keys). A malformed ``traceparent`` is ignored, as the W3C spec asks:
the request is traced as a new root (if sampled), never refused.

Only the SDK and the exporter are imported lazily (by ``start_tracing``), so a process with tracing
off never loads them; the API (``opentelemetry.trace``) is small.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from railcore.settings import ConfigError

__all__ = [
    "Span",
    "SpanKind",
    "Tracer",
    "Tracing",
    "TracingSettings",
    "check_settings",
    "context_of",
    "end_span",
    "failed",
    "headers_for",
    "parent_context",
    "start_tracing",
]

log = logging.getLogger("railgate.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
_OTLP_TRACES_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """The ``tracing:`` section of the gateway's and the edge's config."""

    # OTLP/HTTP collector: http://host:4318 (``/v1/traces`` is added) or the full traces URL. None: off.
    otlp_endpoint: str | None = None
    sample_ratio: float = 1.0  # share of new traces (no sampled caller context) that are recorded
    service_name: str = ""  # the resource's service.name; empty: railgate-gateway / railgate-edge
    export_timeout_s: float = 10.0  # one OTLP POST
    export_delay_ms: float = 5000.0  # spans are sent in batches at least this often (the SDK's schedule delay)


def check_settings(settings: TracingSettings, key: str = "tracing") -> None:
    """Constraints the types alone cannot say, named by their key."""
    if not 0.0 <= settings.sample_ratio <= 1.0 or math.isnan(settings.sample_ratio):
        raise ConfigError(f"{key}.sample_ratio: must be within 0..1, got {settings.sample_ratio}")
    if not settings.export_timeout_s > 0:
        raise ConfigError(f"{key}.export_timeout_s: must be > 0, got {settings.export_timeout_s}")
    if not settings.export_delay_ms > 0:
        raise ConfigError(f"{key}.export_delay_ms: must be > 0, got {settings.export_delay_ms}")
    if settings.otlp_endpoint is not None:
        parts = urlsplit(settings.otlp_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{key}.otlp_endpoint: expected an OTLP/HTTP URL such as http://127.0.0.1:4318, "
                f"got {settings.otlp_endpoint!r}"
            )


def traces_url(endpoint: str) -> str:
    """The OTLP traces URL of ``endpoint``: a bare collector address gets ``/v1/traces``."""
    parts = urlsplit(endpoint)
    return endpoint.rstrip("/") + _OTLP_TRACES_PATH if parts.path in ("", "/") else endpoint


class Tracing:
    """A tracer and the provider that exports its spans; ``shutdown`` flushes them (blocking: call it
    off the event loop)."""

    def __init__(self, provider: Any, tracer: Tracer) -> None:
        self.provider = provider
        self.tracer = tracer

    def shutdown(self) -> None:
        self.provider.shutdown()


def start_tracing(settings: TracingSettings, default_service: str, instrumentation: str = "railgate") -> Tracing | None:
    """The tracer for ``settings``, or None when tracing is off (no ``otlp_endpoint``)."""
    if settings.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    service = settings.service_name or default_service
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    url = traces_url(settings.otlp_endpoint)
    exporter = OTLPSpanExporter(endpoint=url, timeout=settings.export_timeout_s)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_delay_ms))
    log.info("event=tracing_on service=%s otlp=%s sample_ratio=%s", service, url, settings.sample_ratio)
    return Tracing(provider, provider.get_tracer(instrumentation))


def parent_context(carrier: Mapping[str, Any]) -> Context | None:
    """The caller's W3C context from headers or gRPC metadata; None when it sent none or a malformed one."""
    if carrier.get(TRACEPARENT) is None:
        return None
    context = _PROPAGATOR.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def context_of(span: Span) -> Context:
    """A context whose current span is ``span`` (the parent of the spans started in it)."""
    return trace.set_span_in_context(span)


def headers_for(span: Span, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` (or a new dict) with ``traceparent`` (and ``tracestate``) naming ``span`` as the parent."""
    carrier = {} if headers is None else headers
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def failed(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed by ``error``: its class and message, no traceback (kept cheap)."""
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.set_attribute("error.type", type(error).__name__)


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End ``span``, failed by ``error`` if there was one (a cancellation is noted, not an error)."""
    if error is not None:
        if isinstance(error, asyncio.CancelledError):
            span.set_attribute("railgate.cancelled", True)
        else:
            failed(span, error)
    span.end()
