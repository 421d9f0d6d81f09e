"""The admin API: an aiohttp sub-app mounted at ``/admin/``, registered whole under the admin family.

    POST   /admin/reload              re-read the config file's hub table
    POST   /admin/hubs/{hub}/drain    take a hub out of rotation (its batches in flight finish)
    DELETE /admin/hubs/{hub}/drain    put it back

Every path under /admin/ (unknown ones included) answers by the admin family's access level (an
admin key once tenants or admin keys are configured, by default): the HTTP app mounts this sub-app
under that family, so the access middleware (fronts/access.py) guards any admin route added here.
Errors become replies in the parent app's error middleware, which wraps this one.
"""

from __future__ import annotations

from aiohttp import web

from gateway.backends import BackendKind
from gateway.config import ConfigError
from gateway.gateway import Gateway
from railcore.errors import BadRequest, ModelNotFound

_GATEWAY: web.AppKey[Gateway] = web.AppKey("admin_gateway", Gateway)


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[_GATEWAY] = gateway
    app.router.add_post("/reload", reload_hubs)
    app.router.add_post("/hubs/{hub}/drain", drain_hub)
    app.router.add_delete("/hubs/{hub}/drain", drain_hub)
    return app


async def reload_hubs(request: web.Request) -> web.Response:
    try:
        changes = await request.app[_GATEWAY].reload()
    except (ConfigError, ValueError) as exc:
        raise BadRequest(f"reload refused, the hub table is unchanged: {exc}") from exc
    return web.json_response(changes)


async def drain_hub(request: web.Request) -> web.Response:
    gateway = request.app[_GATEWAY]
    name = request.match_info["hub"]
    draining = request.method == "POST"
    try:
        backend = gateway.drain(name) if draining else gateway.undrain(name)
    except KeyError:
        hubs = ", ".join(b.name for b in gateway.backends if b.kind == BackendKind.HUB) or "none"
        raise ModelNotFound(f"no hub named {name!r}; hubs: {hubs}") from None
    return web.json_response({"hub": name, "draining": draining, "inflight": backend.inflight})
