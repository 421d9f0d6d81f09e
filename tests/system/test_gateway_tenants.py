"""Tenants, keys and limits on the live gateway: every status code, usage and spend."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.tenants import hash_key, new_key
from hub.server import Hub
from tests.conftest import GatewayProcess, hub_entry

BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [1.0] * 128}]})
KEYS = {name: new_key() for name in ("acme", "limited", "west-only", "admin")}


@pytest.fixture(scope="module")
def tenant_gateway(hub: Hub, tmp_path_factory):
    config = {
        "hubs": [hub_entry(hub)],
        "local": {"enabled": False},
        "admin_keys": [hash_key(KEYS["admin"])],
        "tenants": [
            {"name": "acme", "keys": [hash_key(KEYS["acme"])], "models": ["digits", "vocab"]},
            {"name": "limited", "keys": [hash_key(KEYS["limited"])], "rate_per_s": 0.01, "burst": 2,
             "daily_quota": 1000},
            {"name": "west-only", "keys": [hash_key(KEYS["west-only"])], "regions": ["west"], "daily_quota": 3},
        ],
    }  # fmt: skip
    g = GatewayProcess(tmp_path_factory.mktemp("tenants"), config).start()
    yield g
    g.stop()


def call(gw: GatewayProcess, path: str, key: str | None = None, body: str | None = BODY, method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:  # fmt: skip
    all_headers = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(
        f"{gw.url}{path}", data=body.encode() if body is not None else None, headers=all_headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


@pytest.mark.parametrize(
    ("key", "path", "status", "message"),
    [
        (None, "/v2/models/digits/infer", 401, "missing API key"),
        ("rg_wrong", "/v2/models/digits/infer", 401, "invalid API key"),
        (KEYS["acme"], "/v2/models/vision/infer", 403, "may not use model 'vision'"),
        (KEYS["acme"], "/v2/models/digits/infer", 200, None),
    ],
)
def test_infer_needs_a_valid_key_for_an_allowed_model(tenant_gateway, key, path, status, message):
    got, headers, reply = call(tenant_gateway, path, key)
    assert got == status, reply
    if message:
        assert message in reply["error"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")


def test_health_and_metrics_stay_open(tenant_gateway):
    assert call(tenant_gateway, "/v2/health/ready", body=None, method="GET")[0] == 200
    with urllib.request.urlopen(f"{tenant_gateway.url}/metrics", timeout=5) as reply:
        assert reply.status == 200


def test_rate_limit_answers_429_with_retry_after(tenant_gateway):
    statuses = [call(tenant_gateway, "/v2/models/digits/infer", KEYS["limited"]) for _ in range(3)]
    assert [s[0] for s in statuses] == [200, 200, 429]
    assert int(statuses[2][1]["Retry-After"]) >= 1 and "rate" in statuses[2][2]["error"]


def test_quota_answers_429_and_residency_is_enforced(tenant_gateway):
    status, headers, _ = call(tenant_gateway, "/v2/models/digits/infer", KEYS["west-only"])
    assert status == 200 and headers["X-Served-By"] == "west-1"
    status, _, reply = call(tenant_gateway, "/v2/models/digits/infer", KEYS["west-only"],
                            headers={"X-Allowed-Regions": "east"})  # fmt: skip
    assert status == 403 and "may not use region(s) east" in reply["error"]
    status, headers, reply = call(tenant_gateway, "/v2/models/digits/infer", KEYS["west-only"])
    assert status == 429 and "daily quota of 3" in reply["error"] and int(headers["Retry-After"]) > 0


def test_admin_endpoints_need_the_admin_key(tenant_gateway):
    assert call(tenant_gateway, "/admin/hubs/west-1/drain", None, body="")[0] == 401
    assert call(tenant_gateway, "/admin/hubs/west-1/drain", KEYS["acme"], body="")[0] == 403
    status, _, reply = call(tenant_gateway, "/admin/hubs/west-1/drain", KEYS["admin"], body="")
    assert status == 200 and reply["draining"] is True
    assert call(tenant_gateway, "/admin/hubs/west-1/drain", KEYS["admin"], body="", method="DELETE")[0] == 200


def test_usage_and_spend_per_tenant(tenant_gateway):
    call(tenant_gateway, "/v2/models/digits/infer", KEYS["acme"])
    status, _, mine = call(tenant_gateway, "/v1/usage", KEYS["acme"], body=None, method="GET")
    assert status == 200 and set(mine) == {"acme"}
    assert mine["acme"]["inferences"] >= 2 and mine["acme"]["spend"] > 0
    status, _, everyone = call(tenant_gateway, "/v1/usage", KEYS["admin"], body=None, method="GET")
    assert status == 200 and set(everyone) == {"acme", "limited", "west-only"}
    with urllib.request.urlopen(f"{tenant_gateway.url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'railgate_tenant_spend_total{tenant="acme"}' in text


def test_bad_priority_is_400(tenant_gateway):
    status, _, reply = call(tenant_gateway, "/v2/models/digits/infer", KEYS["acme"], headers={"X-Priority": "vip"})
    assert status == 400 and "valid: high, normal, low" in reply["error"]


def test_serve_refuses_a_plain_key_in_config(tmp_path: Path):
    from devtools.devstack import StartError

    gw = GatewayProcess(tmp_path, {"tenants": [{"name": "x", "keys": ["rg_plaintext"]}]})
    with pytest.raises(StartError, match=r"tenants\[0\]\.keys\[0\]"):
        gw.start()
