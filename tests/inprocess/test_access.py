"""Who may call what: each route family's access level (config ``access:``), on the real app in-process.

The levels are ``open`` (anyone), ``tenant`` (a tenant's key or an admin key, once tenants are
configured) and ``admin`` (an admin key, once tenants or admin keys are configured). One middleware
enforces them, by the family a route was registered under; a route with a ``{model}`` also checks the
tenant's model list. The local backend serves digits and vision from the built repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import AccessLevels, Artifacts, ConfigError, GatewayConfig, Local, TenantSpec, parse_config
from gateway.fronts.http import create_app
from gateway.tenants import hash_key, new_key

ACME, ADMIN = new_key(), new_key()
BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}


def config(repository: Path, access: AccessLevels | None = None, keys: bool = True) -> GatewayConfig:
    return GatewayConfig(
        local=Local(repository=str(repository), models=("digits", "vision")),
        artifacts=Artifacts(exportable=("digits", "vision")),
        tenants=(TenantSpec("acme", keys=(hash_key(ACME),), models=("digits",)),) if keys else (),
        admin_keys=(hash_key(ADMIN),) if keys else (),
        access=access or AccessLevels(),
    )


@pytest.fixture
async def client(aiohttp_client, repository: Path):
    return await aiohttp_client(create_app(config(repository)))


async def status_of(client, method: str, path: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = BODY if path.endswith("/infer") else None
    async with client.request(method, path, headers=headers, json=body) as reply:
        await reply.read()
        return reply.status


# (method, path, no key, acme's key, an admin key) under the default levels.
DEFAULTS = [
    ("GET", "/v2/health/live", 200, 200, 200),  # health: open
    ("GET", "/v2/health/ready", 200, 200, 200),
    ("GET", "/metrics", 200, 200, 200),  # metrics: open (Prometheus scrapes without a key)
    ("GET", "/v2", 401, 200, 200),  # metadata: tenant
    ("GET", "/v2/models/digits", 401, 200, 200),
    ("GET", "/v2/models/digits/config", 401, 200, 200),
    ("GET", "/v2/models/vision", 401, 403, 200),  # not in acme's models
    ("POST", "/v2/repository/index", 401, 200, 200),
    ("GET", "/v2/models/stats", 401, 200, 200),
    ("POST", "/v2/models/digits/infer", 401, 200, 401),  # inference: tenant (an admin key is not billable)
    ("GET", "/openapi.json", 401, 200, 200),  # openapi: tenant
    ("GET", "/v1/usage", 401, 200, 200),  # usage: tenant (its own), admin (everyone's)
    ("GET", "/status", 401, 403, 200),  # status: admin (hub URLs, breakers, tenants' traffic)
    ("GET", "/v1/models/digits/config.pbtxt", 401, 200, 200),  # artifacts: tenant, and its models
    ("GET", "/v1/models/vision/artifact", 401, 403, 200),
    ("POST", "/admin/hubs/nowhere/drain", 401, 403, 404),  # admin
    ("GET", "/admin/no-such-route", 401, 403, 404),
    ("GET", "/dashboard", 200, 200, 200),  # dashboard: open (a static page; it asks for a key for its reads)
]


@pytest.mark.parametrize(("method", "path", "anonymous", "tenant", "admin"), DEFAULTS)
async def test_each_route_family_answers_by_its_default_level(client, method, path, anonymous, tenant, admin):
    got = [await status_of(client, method, path, key) for key in (None, ACME, ADMIN)]
    assert got == [anonymous, tenant, admin]


async def test_a_tenant_key_lists_and_reads_the_statistics_of_its_own_models_only(client):
    """The index and the all-models statistics are a tenant's view: acme may use digits only, so it is
    shown digits only; an admin key sees every model."""

    async def names(method: str, path: str, key: str) -> set[str]:
        async with client.request(method, path, headers={"Authorization": f"Bearer {key}"}) as reply:
            assert reply.status == 200, await reply.text()
            body = await reply.json()
        rows = body if isinstance(body, list) else body["model_stats"]
        return {row["name"] for row in rows}

    assert await names("POST", "/v2/repository/index", ACME) == {"digits"}
    assert await names("GET", "/v2/models/stats", ACME) == {"digits"}
    assert await names("POST", "/v2/repository/index", ADMIN) == {"digits", "vision"}
    assert await names("GET", "/v2/models/stats", ADMIN) == {"digits", "vision"}


async def test_the_openapi_document_says_which_routes_need_a_key(aiohttp_client, repository: Path):
    """Each operation's 401/403 and ``security`` follow its family's level as configured: a generated
    client learns which calls need the bearer key, and a gateway without keys documents none."""

    async def document(app_config: GatewayConfig, key: str | None) -> dict:
        client = await aiohttp_client(create_app(app_config))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with client.get("/openapi.json", headers=headers) as reply:
            assert reply.status == 200
            return await reply.json()

    def keyed(doc: dict, path: str, method: str = "get") -> tuple[list[str], bool]:
        op = doc["paths"][path][method]
        return sorted(s for s in op["responses"] if s in ("401", "403")), {"bearer": []} in op.get("security", [])

    doc = await document(config(repository), ACME)
    assert keyed(doc, "/v2/health/live") == ([], False)  # health: open
    assert keyed(doc, "/v2") == (["401"], True)  # metadata: tenant, no model
    assert keyed(doc, "/v2/models/{model}") == (["401", "403"], True)  # ... and the tenant's model list
    assert keyed(doc, "/v2/repository/index", "post") == (["401"], True)
    assert keyed(doc, "/status") == (["401", "403"], True)  # status: admin
    assert keyed(doc, "/metrics") == ([], False)  # metrics: open
    opened = await document(config(repository, AccessLevels(metadata="open", metrics="admin")), ACME)
    assert keyed(opened, "/v2/models/{model}") == ([], False)
    assert keyed(opened, "/metrics") == (["401", "403"], True)
    bare = await document(config(repository, keys=False), None)
    assert keyed(bare, "/v2/models/{model}") == keyed(bare, "/status") == ([], False)


async def test_the_levels_come_from_the_config(aiohttp_client, repository: Path):
    app = create_app(config(repository, AccessLevels(status="open", metrics="admin", openapi="open")))
    client = await aiohttp_client(app)
    assert await status_of(client, "GET", "/status", None) == 200
    assert await status_of(client, "GET", "/openapi.json", None) == 200
    assert [await status_of(client, "GET", "/metrics", key) for key in (None, ACME, ADMIN)] == [401, 403, 200]


async def test_without_tenants_or_admin_keys_everything_is_open(aiohttp_client, repository: Path):
    """A development gateway, as before access levels: no route asks for a key (/v1/usage is a 404 there)."""
    client = await aiohttp_client(create_app(config(repository, keys=False)))
    got = {path: await status_of(client, method, path, None) for method, path, *_ in DEFAULTS}
    assert {path for path, status in got.items() if status in (401, 403)} == set()
    assert got["/status"] == got["/v2/models/vision"] == got["/v1/models/vision/artifact"] == 200


async def test_a_route_registered_without_a_family_needs_an_admin_key(aiohttp_client, repository: Path):
    from aiohttp import web

    app = create_app(config(repository))

    async def unclassified(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app.router.add_get("/forgotten", unclassified)
    client = await aiohttp_client(app)
    assert [await status_of(client, "GET", "/forgotten", key) for key in (None, ACME, ADMIN)] == [401, 403, 200]


@pytest.mark.parametrize(
    ("access", "message"),
    [
        ({"status": "public"}, r"access\.status: expected one of open, tenant, admin, got 'public'"),
        ({"inference": "open"}, r"access\.inference: must be tenant"),
        ({"everything": "open"}, r"access\.everything: unknown key"),
    ],
)
def test_a_bad_access_level_names_its_key(access: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"access": access})
