"""``listen.ops``: the ops routes move to an app of their own; the public app keeps only the inference API.

In-process, on the real apps (each on its own loopback test server); ``railgate serve`` with the ops
port is covered in tests/system/test_tls.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Artifacts, GatewayConfig, Listen, Local, OpsListen, TenantSpec
from gateway.fronts.http import OPS_APP, create_app
from gateway.tenants import hash_key, new_key

ACME, ADMIN = new_key(), new_key()
BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
OPS_ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/status"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/dashboard.js"),
    ("POST", "/admin/reload"),
]
PUBLIC_ROUTES = [
    ("GET", "/v2/health/live", 200),
    ("GET", "/v2/health/ready", 200),
    ("GET", "/v2", 200),
    ("GET", "/v2/models/digits", 200),
    ("POST", "/v2/models/digits/infer", 200),
    ("GET", "/openapi.json", 200),
    ("GET", "/v1/usage", 200),
    ("GET", "/v1/models/digits/config.pbtxt", 200),
]


def config(repository: Path, ops: bool) -> GatewayConfig:
    return GatewayConfig(
        listen=Listen(ops=OpsListen(0) if ops else None),
        local=Local(repository=str(repository), models=("digits",)),
        artifacts=Artifacts(exportable=("digits",)),
        tenants=(TenantSpec("acme", keys=(hash_key(ACME),)),),
        admin_keys=(hash_key(ADMIN),),
    )


async def status_of(client: TestClient, method: str, path: str, key: str) -> int:
    body = BODY if path.endswith("/infer") else None
    async with client.request(method, path, headers={"Authorization": f"Bearer {key}"}, json=body) as reply:
        await reply.read()
        return reply.status


@pytest.fixture
async def apps(aiohttp_client, repository: Path):
    app = create_app(config(repository, ops=True))
    public = await aiohttp_client(app)  # starts the gateway (the public app owns it)
    ops = TestClient(TestServer(app[OPS_APP]))
    await ops.start_server()
    yield public, ops
    await ops.close()


@pytest.mark.parametrize(("method", "path"), OPS_ROUTES)
async def test_with_an_ops_listener_the_public_port_answers_404_for_ops_routes(apps, method, path):
    public, _ = apps
    assert await status_of(public, method, path, ADMIN) == 404


@pytest.mark.parametrize(("method", "path"), OPS_ROUTES)
async def test_the_ops_listener_serves_the_ops_routes(apps, method, path):
    _, ops = apps
    # started without a config file, the gateway refuses to reload (400): the admin app answered
    expected = 400 if path == "/admin/reload" else 200
    assert await status_of(ops, method, path, ADMIN) == expected


async def test_the_ops_listener_keeps_the_access_levels(apps):
    _, ops = apps
    assert await status_of(ops, "GET", "/status", ACME) == 403  # a tenant's key is not an admin's
    async with ops.post("/admin/reload") as reply:
        assert reply.status == 401


@pytest.mark.parametrize(("method", "path", "expected"), PUBLIC_ROUTES)
async def test_the_public_port_keeps_the_inference_api(apps, method, path, expected):
    public, _ = apps
    key = ACME
    assert await status_of(public, method, path, key) == expected


async def test_the_ops_listener_reads_the_public_ports_gateway(apps):
    """One gateway behind both: an inference on the public port shows in the ops port's metrics."""
    public, ops = apps
    assert await status_of(public, "POST", "/v2/models/digits/infer", ACME) == 200
    async with ops.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as reply:
        text = await reply.text()
    assert any(line.startswith("railgate_requests_total{") and 'model="digits"' in line for line in text.splitlines())


async def test_without_an_ops_listener_every_route_is_on_the_public_port(aiohttp_client, repository: Path):
    app = create_app(config(repository, ops=False))
    assert OPS_APP not in app
    public = await aiohttp_client(app)
    for method, path in OPS_ROUTES:
        assert await status_of(public, method, path, ADMIN) != 404


async def test_an_ops_route_on_the_public_port_is_a_404_without_a_key_too(apps):
    public, _ = apps
    for path in ("/metrics", "/status", "/dashboard"):
        async with public.get(path) as reply:
            assert reply.status == 404, path


async def test_the_public_openapi_document_leaves_out_the_ops_routes(apps, aiohttp_client, repository: Path):
    public, _ = apps
    async with public.get("/openapi.json", headers={"Authorization": f"Bearer {ACME}"}) as reply:
        paths = set((await reply.json())["paths"])
    assert not {p for p in paths if p in ("/metrics", "/status") or p.startswith(("/admin/", "/dashboard"))}
    assert "/v2/models/{model}/infer" in paths and "/v1/usage" in paths
    alone = await aiohttp_client(create_app(config(repository, ops=False)))
    async with alone.get("/openapi.json", headers={"Authorization": f"Bearer {ACME}"}) as reply:
        assert {"/metrics", "/status", "/admin/reload"} <= set((await reply.json())["paths"])
