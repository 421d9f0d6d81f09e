"""Retries and hedges in the trace: each backend call is a child span of its batch, its attempt named
(first | failover | hedge); the batch records a ``failover`` or ``hedge`` event; a cancelled hedge loser
says so. The production forwarder over scripted hubs (tests/fakes.py), spans kept in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.config import Routing
from gateway.routing.forward import Batch
from gateway.tracing import BatchTrace
from railcore.tracing import context_of
from tests.fakes import ScriptedBackend, answer, batch, forwarder_over, hang, hub_failed, virtual_time


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter, plain: Batch) -> Batch:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    span = tracer.start_span("railgate.batch")
    return dataclasses.replace(plain, trace=BatchTrace(tracer, span, context_of(span)))


def calls_of(exporter: InMemorySpanExporter, traced_batch: Batch) -> list[ReadableSpan]:
    traced_batch.trace.span.end()
    calls = [s for s in exporter.get_finished_spans() if s.name == "railgate.hub_call"]
    batch_id = traced_batch.trace.span.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == batch_id for s in calls)
    return sorted(calls, key=lambda s: s.start_time or 0)


def events_of(exporter: InMemorySpanExporter) -> list[str]:
    (batch_span,) = [s for s in exporter.get_finished_spans() if s.name == "railgate.batch"]
    return [e.name for e in batch_span.events]


def test_a_failover_is_a_second_hub_call_after_a_failed_first(exporter: InMemorySpanExporter) -> None:
    @virtual_time
    async def run() -> None:
        cheap, mid = ScriptedBackend("cheap", hub_failed()), ScriptedBackend("mid", answer(), price=2.0)
        b = traced(exporter, batch())
        assert (await forwarder_over(cheap, mid).forward(b)).backend == "mid"
        first, second = calls_of(exporter, b)
        assert [(s.attributes["railgate.backend"], s.attributes["railgate.attempt"]) for s in (first, second)] == [
            ("cheap", "first"),
            ("mid", "failover"),
        ]
        assert first.status.status_code is StatusCode.ERROR and first.attributes["error.type"] == "HubError"
        assert second.status.status_code is StatusCode.UNSET
        assert events_of(exporter) == ["failover"]

    run()


def test_a_hedge_is_a_second_hub_call_and_the_cancelled_loser_says_so(exporter: InMemorySpanExporter) -> None:
    @virtual_time
    async def run() -> None:
        cheap, mid = ScriptedBackend("cheap", answer(after=0.02), hang()), ScriptedBackend("mid", answer(), price=2.0)
        forwarder = forwarder_over(cheap, mid, routing=Routing(hedge=True, hedge_factor=0.5))
        assert (await forwarder.forward(batch())).backend == "cheap"  # cheap's p95 is now 20 ms
        b = traced(exporter, batch())
        assert (await forwarder.forward(b)).backend == "mid"
        primary, hedge = calls_of(exporter, b)
        assert (primary.attributes["railgate.attempt"], primary.attributes["railgate.cancelled"]) == ("first", True)
        assert (hedge.attributes["railgate.backend"], hedge.attributes["railgate.attempt"]) == ("mid", "hedge")
        assert events_of(exporter) == ["hedge"]

    run()
