"""Tracing on the real app in-process (the local backend serves digits): off, no span code runs and no
header is parsed; on, a malformed ``traceparent`` is ignored (the call answered, traced as a new root)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from devtools import procs
from devtools.otlp import OtlpReceiver, ReceivedSpan
from gateway.config import GatewayConfig, Local
from gateway.fronts.http import GATEWAY, create_app
from railcore.tracing import TracingSettings

BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
VALID = f"00-{'ab' * 16}-{'cd' * 8}-01"


def config(repository: Path, tracing: TracingSettings | None = None) -> GatewayConfig:
    return GatewayConfig(
        local=Local(repository=str(repository), models=("digits",)), tracing=tracing or TracingSettings()
    )


@pytest.fixture
def no_span_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any span started or any trace context parsed or written fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("span code ran with tracing off")

    from opentelemetry.sdk.trace import Tracer

    monkeypatch.setattr(Tracer, "start_span", refuse)
    monkeypatch.setattr(TraceContextTextMapPropagator, "extract", refuse)
    monkeypatch.setattr(TraceContextTextMapPropagator, "inject", refuse)


async def test_with_tracing_off_a_traced_call_runs_no_span_code(aiohttp_client, repository: Path, no_span_code) -> None:
    app = create_app(config(repository))
    client = await aiohttp_client(app)
    assert app[GATEWAY].tracer is None and app[GATEWAY].pipeline.tracer is None
    reply = await client.post("/v2/models/digits/infer", json=BODY, headers={"traceparent": VALID})
    assert reply.status == 200, await reply.text()


def test_with_tracing_off_the_gateway_never_loads_the_sdk_or_exporter() -> None:
    script = (
        "import sys\nfrom gateway.fronts.http import create_app\nfrom gateway.config import GatewayConfig, Local\n"
        "create_app(GatewayConfig())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))"
    )
    done = procs.run([sys.executable, "-c", script], timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-" + "0" * 32 + "-" + "cd" * 8 + "-01",  # all-zero trace id
        "00-" + "ab" * 16 + "-" + "0" * 16 + "-01",  # all-zero parent id
        "00-" + "AB" * 16 + "-" + "cd" * 8 + "-01",  # upper-case hex
        "ff-" + "ab" * 16 + "-" + "cd" * 8 + "-01",  # version ff is invalid
        "00-" + "ab" * 15 + "-" + "cd" * 8 + "-01",  # short trace id
        "",
    ],
)
async def test_a_malformed_traceparent_is_ignored_and_the_call_traced_as_a_new_root(
    aiohttp_client, repository: Path, receiver: OtlpReceiver, traceparent: str
) -> None:
    tracing = TracingSettings(otlp_endpoint=receiver.endpoint, export_delay_ms=20)
    app = create_app(config(repository, tracing))
    client = await aiohttp_client(app)
    receiver.clear()
    reply = await client.post(
        "/v2/models/digits/infer", json=BODY, headers={"traceparent": traceparent, "tracestate": "a=b"}
    )
    assert reply.status == 200, await reply.text()
    await client.close()  # the gateway closes: its tracer flushes

    def served(spans: list[ReceivedSpan]) -> bool:
        return any(s.kind == 2 for s in spans) and any(s.name == "railgate.local_run" for s in spans)

    spans = receiver.wait_for(served)
    (request,) = [s for s in spans if s.kind == 2]
    assert request.parent_id == "" and request.trace_id not in ("ab" * 16, "0" * 32)
    local = next(s for s in spans if s.name == "railgate.local_run")
    assert local.trace_id == request.trace_id


def edge_config(repository: Path, **tracing: object):
    from edge import parse_edge_config

    return parse_edge_config({"repository": str(repository), "models": ["digits"], "tracing": tracing})


def test_with_tracing_off_an_edge_call_runs_no_span_code(repository: Path, no_span_code) -> None:
    from edge import EdgeRuntime
    from tests.samples import sample_inputs

    with EdgeRuntime(edge_config(repository)) as rt:
        assert rt.tracing is None
        result = rt.infer_sync("digits", sample_inputs("digits", batch=1), headers={"traceparent": VALID})
    assert result.served_by == "local"


def test_an_edge_call_is_the_child_of_the_firmwares_traceparent_with_its_decision(
    repository: Path, receiver: OtlpReceiver
) -> None:
    from edge import EdgeRuntime
    from tests.samples import sample_inputs

    receiver.clear()
    with EdgeRuntime(edge_config(repository, otlp_endpoint=receiver.endpoint, export_delay_ms=20)) as rt:
        rt.infer_sync("digits", sample_inputs("digits", batch=1), headers={"TraceParent": VALID})
    spans = receiver.wait_for(lambda spans: any(s.name == "railgate.edge.infer" for s in spans))
    (call,) = [s for s in spans if s.name == "railgate.edge.infer"]
    assert (call.trace_id, call.parent_id) == ("ab" * 16, "cd" * 8)
    where, reason = call.attributes["railgate.offload.where"], call.attributes["railgate.offload.reason"]
    assert (where, reason) == ("local", "no_gateway")


async def test_a_caller_that_says_not_sampled_is_not_recorded_and_the_next_sampled_one_is(
    aiohttp_client, repository: Path, receiver: OtlpReceiver
) -> None:
    tracing = TracingSettings(otlp_endpoint=receiver.endpoint, export_delay_ms=20)
    client = await aiohttp_client(create_app(config(repository, tracing)))
    receiver.clear()
    unsampled, sampled = f"00-{'11' * 16}-{'22' * 8}-00", f"00-{'33' * 16}-{'44' * 8}-01"
    for traceparent in (unsampled, sampled):
        reply = await client.post("/v2/models/digits/infer", json=BODY, headers={"traceparent": traceparent})
        assert reply.status == 200, await reply.text()
    await client.close()
    spans = receiver.wait_for(lambda spans: any(s.name == "railgate.local_run" for s in spans))
    assert {s.trace_id for s in spans} == {"33" * 16}
    assert {s.name for s in spans} >= {"railgate.queue_wait", "railgate.batch", "railgate.local_run"}
