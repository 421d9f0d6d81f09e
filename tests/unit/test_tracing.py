"""The ``tracing:`` config section (gateway and edge alike) and the W3C context helpers."""

from __future__ import annotations

import pytest

from edge.config import parse_edge_config
from gateway.config import parse_config
from railcore.settings import ConfigError
from railcore.tracing import TracingSettings, parent_context, start_tracing, traces_url

PARSERS = [parse_config, parse_edge_config]


@pytest.mark.parametrize("parse", PARSERS)
def test_tracing_is_off_by_default_and_nothing_is_built(parse) -> None:
    settings = parse({}).tracing
    assert settings == TracingSettings()
    assert start_tracing(settings, "railgate-test") is None


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be within 0..1"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio: must be within 0..1"),
        ({"otlp_endpoint": "127.0.0.1:4318"}, "tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
        ({"otlp_endpoint": "grpc://collector:4317"}, "tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
        ({"export_delay_ms": 0}, "tracing.export_delay_ms: must be > 0"),
        ({"export_timeout_s": -1}, "tracing.export_timeout_s: must be > 0"),
        ({"sampling": 0.1}, "tracing.sampling: unknown key"),
        ({"sample_ratio": "all"}, "tracing.sample_ratio: expected a number"),
    ],
)
def test_a_bad_tracing_key_is_named(parse, section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"tracing": section})


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector/otlp/v1/traces", "https://collector/otlp/v1/traces"),
    ],
)
def test_a_bare_collector_address_gets_the_traces_path(endpoint: str, url: str) -> None:
    assert traces_url(endpoint) == url


def test_a_well_formed_traceparent_is_the_parent() -> None:
    context = parent_context({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "tracestate": "k=v"})
    assert context is not None
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    assert (f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}") == ("ab" * 16, "cd" * 8)
    assert span_context.trace_state.get("k") == "v"


@pytest.mark.parametrize("traceparent", ["", "garbage", "00-xyz", f"00-{'0' * 32}-{'cd' * 8}-01", "00-" + "ab" * 40])
def test_a_malformed_traceparent_is_no_parent(traceparent: str) -> None:
    assert parent_context({"traceparent": traceparent}) is None


def test_no_traceparent_is_no_parent() -> None:
    assert parent_context({"tracestate": "k=v"}) is None


def test_a_batch_of_unsampled_members_starts_no_span_and_sends_their_context_on_unsampled() -> None:
    from types import SimpleNamespace

    from opentelemetry.sdk.trace import TracerProvider

    from gateway.tracing import batch_trace, request_span
    from railcore.tracing import headers_for

    tracer = TracerProvider().get_tracer("test")
    member = request_span(tracer, {"traceparent": f"00-{'11' * 16}-{'22' * 8}-00"}, "request", {})
    pending = SimpleNamespace(item=SimpleNamespace(trace=member, queued_ns=0), rows=1)
    traced = batch_trace(tracer, "digits", "", [pending], 1)  # type: ignore[list-item]
    assert traced is not None and not traced.recording
    hub = SimpleNamespace(backend=SimpleNamespace(name="hub", kind="hub", region="west"), reason="nearest")
    call = traced.backend_call(hub, "digits", 1)  # type: ignore[arg-type]
    assert not call.is_recording()
    version, trace_id, _, flags = headers_for(call)["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "11" * 16, "00")
