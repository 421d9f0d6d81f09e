"""EdgeRuntime against the real gateway (whose hub serves the models): offload, budget, offline, recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.devstack import Service
from edge import EdgeConfig, EdgeResult, EdgeRuntime, ModelUnavailable, parse_edge_config
from gateway.tenants import hash_key, new_key
from hub.server import Hub, free_port
from tests.conftest import GatewayProcess, LinkProcess, hub_entry
from tests.samples import assert_same_outputs, local_outputs, sample_inputs

pytestmark = pytest.mark.hub


def edge_config(repository: Path, gateway_url: str, **overrides) -> EdgeConfig:
    raw = {
        "repository": str(repository),
        "models": ["digits"],
        "gateway_url": gateway_url,
        "sync": {"enabled": False},  # these gateways export no artifacts: see test_edge_sync.py
        "probe_interval_s": 0.05,
        "circuit": {"failure_threshold": 2, "backoff_s": 0.1, "max_backoff_s": 0.4},
    }
    return parse_edge_config({**raw, **overrides})


def poll(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)  # polling a condition with a timeout, not waiting for a fixed time
    return condition()


def link_on(port: int, upstream: int, delay_ms: float) -> Service:
    args = ["link", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream}", "--delay-ms", str(delay_ms)]
    return Service(args, "link listening", f"link:{port}")


def test_offloads_to_the_gateway_when_the_budget_allows(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=2, seed=3)
    with EdgeRuntime(edge_config(repository, gateway.url)) as rt:
        first = rt.infer_sync("digits", inputs, budget_ms=5000)
        second = rt.infer_sync("digits", inputs, budget_ms=5000)
    assert (first.served_by, first.reason, first.offloaded) == ("west-1", "remote_unmeasured", True)
    assert (second.served_by, second.reason) == ("west-1", "remote_fits")
    assert_same_outputs(second.outputs, local_outputs(repository, "digits", inputs))


def test_runs_locally_when_the_gateway_cannot_meet_the_budget(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=1, seed=5)
    with (
        LinkProcess(gateway.port, delay_ms=5) as link,
        EdgeRuntime(edge_config(repository, f"http://127.0.0.1:{link.port}")) as rt,
    ):
        measured = rt.infer_sync("digits", inputs, budget_ms=5000)
        assert measured.served_by == "west-1"
        tight = rt.infer_sync("digits", inputs, budget_ms=5)  # the backbone alone takes 10 ms
    assert (tight.served_by, tight.reason, tight.offloaded) == ("local", "remote_over_budget", False)
    assert tight.latency_ms < 5
    assert_same_outputs(tight.outputs, local_outputs(repository, "digits", inputs))


def test_prefer_local_keeps_work_on_the_device_when_both_fit(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=1)
    with EdgeRuntime(edge_config(repository, gateway.url, prefer_local=1.0)) as rt:
        assert rt.infer_sync("digits", inputs, budget_ms=5000, policy="remote").reason == "policy_remote"
        result = rt.infer_sync("digits", inputs, budget_ms=5000)
    assert (result.served_by, result.reason) == ("local", "prefer_local")


def test_a_model_not_on_the_device_goes_to_the_gateway(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("vocab", batch=3, seed=1)
    with EdgeRuntime(edge_config(repository, gateway.url)) as rt:
        result = rt.infer_sync("vocab", inputs, budget_ms=5000, policy="auto")
    assert (result.served_by, result.reason) == ("west-1", "not_local")
    assert_same_outputs(result.outputs, local_outputs(repository, "vocab", inputs))


async def test_async_infer_offloads_and_forwards_route_headers(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("anomaly", batch=2, seed=6)
    async with EdgeRuntime(edge_config(repository, gateway.url, models=["anomaly"])) as rt:
        result = await rt.infer("anomaly", inputs, 5000, "remote", headers={"X-Route-Policy": "cheapest"})
    assert result.served_by == "west-1" and result.offloaded
    assert_same_outputs(result.outputs, local_outputs(repository, "anomaly", inputs))


def test_a_slow_gateway_is_cut_in_time_for_the_local_run(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=1, seed=2)
    with (
        LinkProcess(gateway.port, delay_ms=100) as link,
        EdgeRuntime(edge_config(repository, f"http://127.0.0.1:{link.port}")) as rt,
    ):
        result = rt.infer_sync("digits", inputs, budget_ms=40, policy="remote")
    assert (result.served_by, result.reason) == ("local", "remote_timeout")
    assert result.latency_ms <= 40
    assert_same_outputs(result.outputs, local_outputs(repository, "digits", inputs))


def test_offline_every_local_model_answers_within_budget_and_others_fail_fast(repository: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    inputs = sample_inputs("digits", batch=1, seed=7)
    circuit = {"failure_threshold": 2, "backoff_s": 30.0, "max_backoff_s": 30.0}
    with EdgeRuntime(edge_config(repository, closed, probe_interval_s=0, circuit=circuit)) as rt:
        results = [rt.infer_sync("digits", inputs, budget_ms=20) for _ in range(5)]
        assert all(r.served_by == "local" and r.latency_ms <= 20 for r in results)
        assert {r.reason for r in results} <= {"remote_failed", "circuit_open"}
        assert results[-1].reason == "circuit_open" and rt.gateway_state == "down"
        started = time.perf_counter()
        with pytest.raises(ModelUnavailable, match=r"model 'vision' is not on this device.*unreachable") as caught:
            rt.infer_sync("vision", sample_inputs("vision", batch=1), budget_ms=20)
        assert caught.value.status == 503 and time.perf_counter() - started < 0.05
        assert rt.metrics.registry.get_sample_value(
            "railgate_edge_fallbacks_total", {"model": "digits", "cause": "remote_failed"}
        )
    assert_same_outputs(results[-1].outputs, local_outputs(repository, "digits", inputs))


def test_backbone_loss_falls_back_locally_and_remote_traffic_resumes(gateway: GatewayProcess, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=1, seed=9)
    port = free_port()
    link = link_on(port, gateway.port, delay_ms=1).start(30)
    try:
        with EdgeRuntime(edge_config(repository, f"http://127.0.0.1:{port}")) as rt:
            assert rt.infer_sync("digits", inputs, budget_ms=2000).served_by == "west-1"
            link.stop()  # the backbone goes down mid-test
            during: list[EdgeResult] = [rt.infer_sync("digits", inputs, budget_ms=50) for _ in range(5)]
            assert all(r.served_by == "local" and r.latency_ms <= 50 for r in during)
            assert poll(lambda: rt.gateway_state == "down")
            assert rt.infer_sync("digits", inputs, budget_ms=50).reason == "circuit_open"
            link = link_on(port, gateway.port, delay_ms=1).start(30)  # back, same address; no restart
            assert poll(lambda: rt.infer_sync("digits", inputs, budget_ms=2000).served_by == "west-1")
            assert rt.gateway_state == "up"
    finally:
        link.stop()


def test_the_devices_tenant_key_goes_with_offloaded_calls(hub: Hub, repository: Path, tmp_path: Path) -> None:
    key = new_key()
    config = {
        "hubs": [hub_entry(hub)],
        "local": {"enabled": False},
        "tenants": [{"name": "device-fleet", "keys": [hash_key(key)], "models": ["digits"]}],
    }
    tenant_gateway = GatewayProcess(tmp_path, config).start()
    inputs = sample_inputs("digits", batch=1, seed=4)
    try:
        with EdgeRuntime(edge_config(repository, tenant_gateway.url, gateway_api_key=key)) as rt:
            assert rt.infer_sync("digits", inputs, 5000, "remote").served_by == "west-1"
        with EdgeRuntime(edge_config(repository, tenant_gateway.url)) as rt:  # no key: refused up there ...
            result = rt.infer_sync("digits", inputs, 5000, "remote")
            assert (result.served_by, result.reason) == ("local", "remote_failed")  # ... answered here
            assert rt.gateway_state == "up"  # a refusal is not ill health
    finally:
        tenant_gateway.stop()
