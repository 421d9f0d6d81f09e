"""One trace from the device to the hub: edge decision -> edge remote call -> gateway request -> batch
(linked to its members) -> hub call -> Triton's own spans, all exported over OTLP/HTTP to a real receiver.

A real tritonserver (its OpenTelemetry trace mode on, exporting to the same receiver), the gateway
as a child process with tracing on, and the edge runtime in this process calling the gateway.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from devtools.otlp import OtlpReceiver, ReceivedSpan
from devtools.procs import free_port
from edge import EdgeRuntime, parse_edge_config
from hub.server import Hub, HubConfig
from tests.conftest import GatewayProcess, LinkProcess
from tests.samples import sample_inputs

pytestmark = pytest.mark.hub

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
TRITON_TRACING = (
    "--trace-config", "mode=opentelemetry",
    "--trace-config", "rate=1",
    "--trace-config", "level=TIMESTAMPS",
    "--trace-config", "opentelemetry,bsp_schedule_delay=100",
)  # fmt: skip


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_hub(repository: Path, receiver: OtlpReceiver) -> Iterator[Hub]:
    """A real hub whose own OpenTelemetry traces go to the receiver."""
    config = HubConfig(
        repository=repository,
        http_port=free_port(),
        grpc_port=free_port(),
        name="west-traced",
        models=("digits",),
        extra_args=(*TRITON_TRACING, "--trace-config", f"opentelemetry,url={receiver.endpoint}/v1/traces"),
    )
    hub = Hub(config).start()
    yield hub
    hub.stop()


def tracing_config(receiver: OtlpReceiver, **extra) -> dict:
    return {"otlp_endpoint": receiver.endpoint, "service_name": "gw-under-test", "export_delay_ms": 50, **extra}


@pytest.fixture(scope="module")
def traced_gateway(traced_hub: Hub, receiver: OtlpReceiver, tmp_path_factory) -> Iterator[GatewayProcess]:
    """The gateway with tracing on, its hub behind a 30 ms backbone: a batch in flight that long lets the
    calls that arrive meanwhile queue and share the next batch."""
    with LinkProcess(traced_hub.config.http_port, delay_ms=30) as link:
        config = {
            "hubs": [{"name": "west-traced", "url": f"http://127.0.0.1:{link.port}", "region": "west"}],
            "local": {"enabled": False},
            "listen": {"grpc_port": 0},
            "health": {"probe_interval_s": 0.5, "warmup": False},
            "batching": {"max_inflight_batches": 1, "max_queue_delay_ms": 50},
            "tracing": tracing_config(receiver),
        }
        g = GatewayProcess(tmp_path_factory.mktemp("gw-traced"), config).start()
        yield g
        g.stop()


def one(spans: list[ReceivedSpan], **match) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name, s.parent_id) for s in spans])
    return found[0]


def test_one_trace_runs_from_the_edge_decision_to_the_hub_and_into_triton(
    traced_gateway: GatewayProcess, receiver: OtlpReceiver, repository: Path
) -> None:
    receiver.clear()
    edge = parse_edge_config(
        {
            "repository": str(repository),
            "models": ["digits"],
            "gateway_url": traced_gateway.url,
            "sync": {"enabled": False},
            "probe_interval_s": 0,
            "policy": "remote",
            "tracing": {"otlp_endpoint": receiver.endpoint, "export_delay_ms": 50},
        }
    )
    with EdgeRuntime(edge) as rt:
        result = rt.infer_sync("digits", sample_inputs("digits", batch=2, seed=1), budget_ms=5000)
    assert (result.offloaded, result.served_by) == (True, "west-traced")

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans}
        triton = any(s.service.startswith("triton") for s in spans)
        return {"railgate.edge.infer", "railgate.hub_call"} <= names and triton

    spans = receiver.wait_for(complete)
    edge_call = one(spans, name="railgate.edge.infer")
    trace_id = edge_call.trace_id
    spans = [s for s in spans if s.trace_id == trace_id]
    assert edge_call.parent_id == ""
    assert edge_call.service == "railgate-edge"
    assert (edge_call.attributes["railgate.offload.where"], edge_call.attributes["railgate.offload.reason"]) == (
        "remote",
        "policy_remote",
    )
    remote = one(spans, name="railgate.edge.remote_call")
    assert (remote.parent_id, remote.kind) == (edge_call.span_id, CLIENT)
    request = one(spans, service="gw-under-test", kind=SERVER)
    assert request.parent_id == remote.span_id
    assert request.name == "POST /v2/models/{model}/infer"
    assert request.attributes["http.response.status_code"] == 200
    wait = one(spans, name="railgate.queue_wait")
    assert wait.parent_id == request.span_id
    batch = one(spans, name="railgate.batch")
    assert batch.parent_id == request.span_id
    assert (trace_id, request.span_id) in batch.links
    hub_call = one(spans, name="railgate.hub_call")
    assert (hub_call.parent_id, hub_call.kind) == (batch.span_id, CLIENT)
    assert hub_call.attributes["railgate.backend"] == "west-traced"
    assert hub_call.attributes["railgate.attempt"] == "first"
    version, sent_trace, sent_parent, flags = hub_call.attributes["railgate.hub.traceparent"].split("-")
    assert (version, sent_trace, sent_parent) == ("00", trace_id, hub_call.span_id)
    assert int(flags, 16) & 1, "sent as sampled"
    # Triton read the traceparent it was sent: its own root span for the request is the hub call's child.
    triton = [s for s in spans if s.service.startswith("triton")]
    assert triton, "Triton's spans did not join the trace"
    assert any(s.parent_id == hub_call.span_id for s in triton)
    assert receiver.bad_posts == []


def test_a_batch_is_linked_to_every_member_request(traced_gateway: GatewayProcess, receiver: OtlpReceiver) -> None:
    receiver.clear()
    inputs = sample_inputs("digits", batch=1, seed=2)
    parents = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(8)]

    def call(traceparent: str) -> None:
        with httpclient.InferenceServerClient(traced_gateway.address) as client:
            tensors = []
            for name, array in inputs.items():
                tensor = httpclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array, binary_data=True)
                tensors.append(tensor)
            client.infer("digits", tensors, headers={"traceparent": traceparent})

    with concurrent.futures.ThreadPoolExecutor(len(parents)) as pool:
        list(pool.map(call, parents))
    trace_ids = {p.split("-")[1] for p in parents}

    def requests_done(spans: list[ReceivedSpan]) -> bool:
        served = [s for s in spans if s.service == "gw-under-test" and s.kind == SERVER and s.trace_id in trace_ids]
        calls = [s for s in spans if s.name == "railgate.hub_call"]
        return len(served) == len(parents) and sum(c.attributes["railgate.batch.rows"] for c in calls) >= len(parents)

    spans = receiver.wait_for(requests_done)
    requests = {
        s.span_id: s for s in spans if s.service == "gw-under-test" and s.kind == SERVER and s.trace_id in trace_ids
    }
    # Each request is the child of the span its caller named.
    assert sorted(s.parent_id for s in requests.values()) == sorted(p.split("-")[2] for p in parents)
    batches = [s for s in spans if s.name == "railgate.batch"]
    linked = [span_id for b in batches for _, span_id in b.links]
    assert sorted(linked) == sorted(requests), "every request is linked from exactly one batch"
    for b in batches:
        assert b.attributes["railgate.batch.members"] == len(b.links)
        assert b.parent_id == requests[b.links[0][1]].span_id  # the batch is its first member's child
    assert max(len(b.links) for b in batches) > 1, "no two calls shared a batch: the links were not tested"


def test_the_grpc_front_takes_traceparent_from_metadata_and_ignores_a_malformed_one(
    traced_gateway: GatewayProcess, receiver: OtlpReceiver
) -> None:
    receiver.clear()
    inputs = sample_inputs("digits", batch=1, seed=4)
    good, bad = f"00-{'ab' * 16}-{'cd' * 8}-01", "00-not-a-trace-context"
    with grpcclient.InferenceServerClient(traced_gateway.grpc_address) as client:
        for traceparent in (good, bad):
            tensors = []
            for name, array in inputs.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            reply = client.infer("digits", tensors, headers={"traceparent": traceparent})
            assert reply.get_response(as_json=True)["outputs"], "answered"

    def both(spans: list[ReceivedSpan]) -> bool:
        return len([s for s in spans if s.name.endswith("/ModelInfer")]) == 2

    served = [s for s in receiver.wait_for(both) if s.name.endswith("/ModelInfer")]
    assert {s.service for s in served} == {"gw-under-test"}
    joined = one(served, trace_id="ab" * 16)
    assert joined.parent_id == "cd" * 8
    assert joined.kind == SERVER and joined.attributes["rpc.system"] == "grpc"
    (fresh,) = [s for s in served if s is not joined]
    assert fresh.parent_id == "" and fresh.trace_id != "ab" * 16  # a new root, the call answered


def test_a_grpc_hub_call_sends_its_traceparent_in_metadata_and_triton_joins(
    traced_hub: Hub, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = {
        "hubs": [{"name": "west-grpc", "url": f"127.0.0.1:{traced_hub.config.grpc_port}", "protocol": "grpc"}],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5, "warmup": False},
        "tracing": tracing_config(receiver, service_name="gw-grpc-hub"),
    }
    receiver.clear()
    inputs = sample_inputs("digits", batch=1, seed=6)
    with GatewayProcess(tmp_path, config) as gateway, httpclient.InferenceServerClient(gateway.address) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        client.infer("digits", tensors, headers={"traceparent": f"00-{'ef' * 16}-{'12' * 8}-01"})

        def joined(spans: list[ReceivedSpan]) -> bool:
            calls = [s for s in spans if s.name == "railgate.hub_call" and s.trace_id == "ef" * 16]
            return bool(calls) and any(s.parent_id == calls[0].span_id for s in spans if s.service.startswith("triton"))

        spans = receiver.wait_for(joined)
    (hub_call,) = [s for s in spans if s.name == "railgate.hub_call" and s.trace_id == "ef" * 16]
    assert hub_call.attributes["railgate.backend"] == "west-grpc"
    assert hub_call.attributes["server.port"] == traced_hub.config.grpc_port
