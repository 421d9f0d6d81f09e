"""Who may call what: one middleware enforces each route family's access level (config ``access:``).

Every route is registered under a family (``Family``): the HTTP app's routes one by one
(``RouteFamilies.add``), a sub-app's all at once (``family_of_app``: every path under ``/admin/`` or
``/v1/models/``, unknown ones included). The middleware looks the family up on the matched route,
never on the path, and applies the family's level from the config:

    open     anyone
    tenant   a tenant's key or an admin key; open while no tenants are configured
    admin    an admin key; open while neither tenants nor admin keys are configured

A route that carries a ``{model}`` also checks the tenant's model list (an admin key may see every
model), so a tenant's key reads the metadata and downloads the artifacts of its own models only. A
route registered without a family is an admin's (fail closed); a path no route matches goes on to
its 404 or 405, which tells nothing. Inference is checked here and again by the inference service,
which needs the tenant to bill it (and is what the gRPC front calls).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.config import Access, AccessLevels
from gateway.tenants import Tenants
from railcore.errors import RailgateError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Family(enum.StrEnum):
    """A group of routes that share an access level; the names are the keys of ``access:``."""

    HEALTH = "health"
    METADATA = "metadata"
    INFERENCE = "inference"
    METRICS = "metrics"
    STATUS = "status"
    OPENAPI = "openapi"
    USAGE = "usage"
    ARTIFACTS = "artifacts"
    ADMIN = "admin"
    DASHBOARD = "dashboard"


_APP_FAMILY: web.AppKey[Family] = web.AppKey("access_family", Family)


class RouteFamilies:
    """The family of each of an app's resources (a resource's GET and HEAD routes share it)."""

    def __init__(self) -> None:
        self._families: dict[web.AbstractResource, Family] = {}

    def add(self, family: Family, route: web.AbstractRoute) -> web.AbstractRoute:
        self._families[route.resource] = family  # type: ignore[index]  # a registered route has its resource
        return route

    def of(self, request: web.Request) -> Family | None:
        """The request's family; None when no route matched (its 404 or 405 tells nothing)."""
        info = request.match_info
        for app in reversed(info.apps):  # the innermost sub-app that has a family: all of its paths
            family = app.get(_APP_FAMILY)
            if family is not None:
                return family
        if info.http_exception is not None:
            return None
        resource = info.route.resource
        return self._families.get(resource, Family.ADMIN) if resource is not None else Family.ADMIN


def family_of_app(app: web.Application, family: Family) -> web.Application:
    """Put every path of sub-app ``app`` under ``family``; returns ``app``."""
    app[_APP_FAMILY] = family
    return app


def check_access(level: Access, tenants: Tenants, authorization: str | None, model: str | None) -> None:
    """Raise Unauthorized (no or unknown key) or Forbidden (the wrong kind of key, or a model outside
    the tenant's list) unless ``authorization`` may call a route of ``level``."""
    if level == Access.ADMIN:
        if tenants.admin_enabled:
            tenants.authenticate_admin(authorization)
    elif level == Access.TENANT and tenants.enabled:
        tenant = tenants.authenticate_any(authorization)
        if tenant is not None and model is not None:
            tenants.check_model(tenant, model)


def visible_models(tenants: Tenants, authorization: str | None) -> frozenset[str] | None:
    """The models a caller is shown in a listing (the repository index, every model's statistics): a
    tenant's key, its model list; None (every model) without tenants, for an admin key, for a tenant
    with no list, or for a caller without a valid key where the family's level let it in (open)."""
    if not tenants.enabled:
        return None
    try:
        tenant = tenants.authenticate_any(authorization)
    except RailgateError:
        return None
    return frozenset(tenant.spec.models) if tenant is not None and tenant.spec.models else None


def access_middleware(levels: AccessLevels, tenants: Tenants, families: RouteFamilies) -> Middleware:
    """The aiohttp middleware: each request's family, its level in ``levels``, checked before the handler."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        family = families.of(request)
        if family is not None:
            level = Access(getattr(levels, family))
            check_access(level, tenants, request.headers.get("Authorization"), request.match_info.get("model"))
        return await handler(request)

    return access
