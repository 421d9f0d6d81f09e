"""Routing against real hubs: failover, drain, reload, hedging, /status. Every request is counted."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from hub.server import Hub
from tests.conftest import GatewayProcess, LinkProcess, hub_entry, start_hub

BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}).encode()


@pytest.fixture(scope="module")
def hub2(repository: Path):
    h = start_hub(repository, "west-2")
    yield h
    h.stop()


def infer(gw: GatewayProcess, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(f"{gw.url}/v2/models/digits/infer", data=BODY, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def call(gw: GatewayProcess, method: str, path: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{gw.url}{path}", method=method, data=b"" if method != "GET" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_hub_fails_over_and_no_request_is_lost(repository: Path, hub: Hub, tmp_path: Path):
    doomed = start_hub(repository, "doomed")
    config = {
        "hubs": [hub_entry(doomed, price_per_1k=0.001), hub_entry(hub, price_per_1k=0.05)],
        "local": {"enabled": False},
        "routing": {"default_policy": "cheapest"},
        "health": {"probe_interval_s": 3600.0},
    }
    gw = GatewayProcess(tmp_path, config).start()
    try:
        assert infer(gw)[1]["X-Served-By"] == "doomed"
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        results = [infer(gw) for _ in range(20)]
        assert [r[0] for r in results] == [200] * 20, "a request was lost or failed during failover"
        assert {r[1]["X-Served-By"] for r in results} == {hub.config.name}
        assert results[0][1]["X-Route-Reason"].startswith("failover")
        _, status = call(gw, "GET", "/status")
        dead = next(h for h in status["hubs"] if h["name"] == "doomed")
        assert dead["breaker"] in ("open", "half_open") and dead["ejections"] >= 1
    finally:
        gw.stop()
        doomed.stop()


def test_drained_hub_gets_no_new_traffic_and_returns_when_undrained(hub: Hub, hub2: Hub, tmp_path: Path):
    config = {"hubs": [hub_entry(hub), hub_entry(hub2)], "local": {"enabled": False},
              "routing": {"default_policy": "round_robin"}}  # fmt: skip
    gw = GatewayProcess(tmp_path, config).start()
    try:
        assert {infer(gw)[1]["X-Served-By"] for _ in range(6)} == {"west-1", "west-2"}
        status, reply = call(gw, "POST", "/admin/hubs/west-1/drain")
        assert status == 200 and reply["draining"] is True
        assert {infer(gw)[1]["X-Served-By"] for _ in range(10)} == {"west-2"}
        call(gw, "DELETE", "/admin/hubs/west-1/drain")
        assert {infer(gw)[1]["X-Served-By"] for _ in range(6)} == {"west-1", "west-2"}
        status, reply = call(gw, "POST", "/admin/hubs/nowhere/drain")
        assert status == 404 and "west-1" in reply["error"]
    finally:
        gw.stop()


def test_reload_adds_a_hub_and_refuses_a_bad_file_keeping_the_old_table(hub: Hub, hub2: Hub, tmp_path: Path):
    config = {"hubs": [hub_entry(hub)], "local": {"enabled": False}, "routing": {"default_policy": "round_robin"}}
    gw = GatewayProcess(tmp_path, config).start()
    path = gw.service.args[gw.service.args.index("--config") + 1]
    try:
        Path(path).write_text(yaml.safe_dump({**config, "hubs": [hub_entry(hub), hub_entry(hub2)]}))
        status, changes = call(gw, "POST", "/admin/reload")
        assert status == 200 and changes["added"] == ["west-2"]
        assert {infer(gw)[1]["X-Served-By"] for _ in range(6)} == {"west-1", "west-2"}

        Path(path).write_text(yaml.safe_dump({**config, "hubs": [{**hub_entry(hub), "price_per_1k": "x"}]}))
        status, reply = call(gw, "POST", "/admin/reload")
        assert status == 400 and "hubs[0].price_per_1k" in reply["error"] and "unchanged" in reply["error"]
        assert {infer(gw)[1]["X-Served-By"] for _ in range(6)} == {"west-1", "west-2"}

        # SIGHUP reloads too: back to one hub, the other drained and removed.
        Path(path).write_text(yaml.safe_dump(config))
        gw.service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: [h["name"] for h in call(gw, "GET", "/status")[1]["hubs"]] == ["west-1"], what="removal")
        assert {infer(gw)[1]["X-Served-By"] for _ in range(4)} == {"west-1"}
    finally:
        gw.stop()


def test_a_batch_past_its_hubs_p95_is_hedged_to_the_next_best(hub: Hub, hub2: Hub, tmp_path: Path):
    with LinkProcess(hub2.config.http_port, delay_ms=150) as link:
        slow = {"name": "slow-cheap", "url": f"http://127.0.0.1:{link.port}", "region": "west", "price_per_1k": 0.001}
        config = {
            "hubs": [slow, hub_entry(hub, price_per_1k=0.05)],
            "local": {"enabled": False},
            "routing": {"default_policy": "cheapest", "hedge": True, "hedge_factor": 0.2},
            "health": {"probe_interval_s": 3600.0},
        }
        gw = GatewayProcess(tmp_path, config).start()
        try:
            # Warm-up measured the slow hub (~300 ms); cheapest picks it, and past 0.2 x its p95
            # the batch is copied to west-1, which answers first.
            status, reply_headers, _ = infer(gw, {"X-Latency-Budget-Ms": "5000"})
            assert status == 200
            assert reply_headers["X-Served-By"] == "west-1"
            assert reply_headers["X-Route-Reason"].startswith("hedge")
        finally:
            gw.stop()


def test_status_reports_every_hub(gateway: GatewayProcess):
    infer(gateway)
    status, body = call(gateway, "GET", "/status")
    assert status == 200 and body["default_policy"] == "nearest"
    (west,) = body["hubs"]
    assert west["name"] == "west-1" and west["healthy"] and west["breaker"] == "closed"
    assert west["rtt_ms"] is not None and west["models"]["digits"]["latency_ms"] is not None
    assert body["recent_decisions"][-1]["backend"] == "west-1"
