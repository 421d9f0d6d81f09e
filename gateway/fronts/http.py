"""The HTTP front: the aiohttp app, its KServe v2 routes, and the operations routes beside them.

The inference handler is read body -> decode -> ``InferenceService`` -> encode; every other
handler reads the gateway. Errors are mapped to ``{"error": ...}`` once, by the error middleware,
which wraps the sub-apps too: ``/admin/`` (fronts/admin.py) and the model artifacts under
``/v1/models/`` (gateway/artifacts.py). Who may call a route is decided once, by the access
middleware (fronts/access.py), from the family each route is registered under (``_FAMILIES``).

With ``listen.ops`` set, the operations routes (``/metrics``, ``/status``, ``/dashboard``,
``/admin/*``) go to an app of their own (``app[OPS_APP]``, served on the ops listener by
gateway/serving.py) with the same middlewares and access levels; the public app keeps only the
inference API (v2, health, ``/v1/usage``, ``/v1/models/`` artifacts, ``/openapi.json``) and answers 404
for the rest. Both read the one gateway, which starts and closes with the public app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway import artifacts, dashboard, tracing
from gateway.call import Call, arrival, call_from_metadata
from gateway.config import GatewayConfig
from gateway.fronts.access import Family, RouteFamilies, access_middleware, family_of_app, visible_models
from gateway.fronts.admin import admin_app
from gateway.fronts.body import JSON_PYTHON_BYTES_PER_BYTE, BodyLimits, ReadingBudget, held_body, read_body
from gateway.gateway import Gateway
from gateway.openapi import Keys, openapi_route
from gateway.service import InferenceService
from railcore.catalog import ModelInfo
from railcore.errors import ModelNotFound, RailgateError
from railcore.protocol.codec import DecodeLimits, decode_request, encode_response, header_length
from railcore.web import errors_middleware

VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "msgpack_tensor_data", "latency_budget"]
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


@dataclass(frozen=True, slots=True)
class InferFront:
    """What the inference handler needs, looked up once per request."""

    service: InferenceService
    decode_limits: DecodeLimits
    body_limits: BodyLimits
    reading: ReadingBudget  # the bytes of all bodies being read or held at once
    tracer: object | None = None  # OpenTelemetry's when tracing is on (gateway/tracing.py), else None


INFER_FRONT: web.AppKey[InferFront] = web.AppKey("infer_front", InferFront)
OPS_APP: web.AppKey[web.Application] = web.AppKey("ops_app", web.Application)


def create_app(config: GatewayConfig, config_path: Path | None = None) -> web.Application:
    """The gateway's aiohttp app; the gateway starts and closes with it."""
    gateway = Gateway(config, config_path)
    families = RouteFamilies()
    middlewares = [errors_middleware("gateway", _count_failed_inference),
                   access_middleware(config.access, gateway.tenants, families)]  # fmt: skip
    if gateway.tracer is not None:  # outermost: the request's span sees the status it was answered
        middlewares.insert(0, tracing.http_middleware(gateway.tracer, lambda r: r.match_info.handler is infer))
    app = web.Application(middlewares=middlewares, client_max_size=config.limits.max_body_bytes)
    app[GATEWAY] = gateway
    limits = config.limits
    decode_limits = DecodeLimits(
        max_inputs=limits.max_inputs,
        max_elements=limits.max_elements,
        max_bytes_element=limits.max_bytes_element,
        max_json_python_bytes=JSON_PYTHON_BYTES_PER_BYTE * limits.max_json_body_bytes,
    )
    body_limits = BodyLimits(limits.max_body_bytes, limits.max_json_body_bytes, limits.body_timeout_s)
    reading = ReadingBudget(limits.max_reading_bytes)
    app[INFER_FRONT] = InferFront(gateway.service, decode_limits, body_limits, reading, gateway.tracer)

    async def start(app: web.Application) -> None:
        await gateway.start()

    async def stop(app: web.Application) -> None:
        await gateway.close()

    async def close_connections_while_draining(request: web.Request, response: web.StreamResponse) -> None:
        if gateway.draining:  # clients stop reusing connections before the listener goes
            response.force_close()
            response.headers["Connection"] = "close"  # headers are already computed when this hook runs

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.on_response_prepare.append(close_connections_while_draining)
    r = app.router
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_post("/v2/repository/index", repository_index)
    r.add_get("/v2/models/stats", model_statistics)
    # aiohttp tries the routes under one static prefix (here /v2/models) in the order they were added,
    # a regex each: the infer routes, on every request's path, go first.
    prefixes = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    for prefix in prefixes:
        r.add_post(prefix + "/infer", infer)
    for prefix in prefixes:
        r.add_get(prefix + "/stats", model_statistics)
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
    keys = Keys(config.access, tenants=gateway.tenants.enabled, admin=gateway.tenants.admin_enabled)
    openapi_json = openapi_route(lambda: gateway.router.catalog, ops_routes=config.listen.ops is None, keys=keys)
    r.add_get("/openapi.json", openapi_json)
    r.add_get("/v1/usage", usage)
    app.add_subapp("/v1/models/", family_of_app(_artifacts_app(config), Family.ARTIFACTS))
    ops, ops_families = app, families
    if config.listen.ops is not None:
        ops_families = RouteFamilies()
        ops = web.Application(middlewares=[errors_middleware("gateway"),
                                           access_middleware(config.access, gateway.tenants, ops_families)])  # fmt: skip
        ops[GATEWAY] = gateway
        app[OPS_APP] = ops
    ops.router.add_get("/metrics", metrics)
    ops.router.add_get("/status", status)
    dashboard.mount(ops)  # /dashboard: the page over /status and /metrics (gateway/dashboard/)
    ops.add_subapp("/admin/", family_of_app(admin_app(gateway), Family.ADMIN))
    handler_families = {**_FAMILIES, openapi_json: Family.OPENAPI}
    for each_app, each_families in {id(app): (app, families), id(ops): (ops, ops_families)}.values():
        for route in each_app.router.routes():
            # The dashboard's handlers are its own module's: its static page holds no data (it reads /status
            # and /metrics, each at its own level, and asks for a key when they answer 401 or 403).
            dashboard_page = route.handler.__module__ == dashboard.__name__
            family = Family.DASHBOARD if dashboard_page else handler_families.get(route.handler)
            if family is not None:
                each_families.add(family, route)
    return app


def _count_failed_inference(request: web.Request, exc: RailgateError) -> None:
    if request.path.endswith("/infer"):
        request.config_dict[GATEWAY].service.record_failure(request.match_info.get("model", ""), exc)


# -- inference ------------------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()  # the gateway's own time for the call, reported as X-Gateway-Ms
    front = request.app[INFER_FRONT]
    transport = request.transport
    call = call_from_metadata(
        request.headers,
        arrived=arrival(asyncio.get_running_loop()),
        gone=lambda: transport is None or transport.is_closing(),
        body_bytes=request.content_length,
        trace=None if front.tracer is None else request[tracing.REQUEST_SPAN],
    )
    chunks, headers = await serve_infer(
        front,
        call,
        request.match_info["model"],
        request.match_info.get("version", ""),
        request.headers,
        request.content_type,
        lambda length: read_body(request, front.body_limits, front.reading, length),
        started,
    )
    return web.Response(body=chunks[0] if len(chunks) == 1 else b"".join(chunks), headers=headers)


async def serve_infer(
    front: InferFront,
    call: Call,
    model: str,
    version: str,
    headers_in: Mapping[str, str],
    content_type: str,
    body: Callable[[int | None], read_body | held_body],
    started: float,
) -> tuple[list[bytes | memoryview], dict[str, str]]:
    """One infer call, whichever HTTP path read it (aiohttp's handler above, or fronts/lean.py): admit,
    read the body (``body(its JSON header's length)``), decode, infer, encode. The reply's chunks and
    headers; a RailgateError (X-Gateway-Ms added) for the caller to answer."""
    try:
        # Admitted (and counted in progress) before a byte of the body is read; released on every exit.
        ticket = front.service.admit(call, model, version)
        try:
            length = header_length(headers_in)
            async with body(length) as data:
                decoded = decode_request(
                    data,
                    content_type=content_type,
                    header_length=length,
                    model=ticket.info.name,
                    version=ticket.version,
                    limits=front.decode_limits,
                )
                served = await front.service.infer(ticket, decoded)
        finally:
            ticket.release()
    except RailgateError as exc:  # its reply (the errors middleware's) says the gateway's time too: a 504's
        exc.headers["X-Gateway-Ms"] = _gateway_ms(started)
        raise
    chunks, headers = encode_response(served.response, decoded)
    headers.update(served.headers)
    # A client (or load generator) tells the gateway's lateness from its own by this.
    headers["X-Gateway-Ms"] = _gateway_ms(started)
    return chunks, headers


def _gateway_ms(started: float) -> str:
    """The gateway's own time for a call, from its handler's start (``X-Gateway-Ms``)."""
    return f"{(time.perf_counter() - started) * 1000:.3f}"


# -- server and model endpoints ----------------------------------------------------------------


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "railgate", "version": VERSION, "extensions": EXTENSIONS})


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[GATEWAY].ready() else 503)


def _model(request: web.Request) -> tuple[Gateway, ModelInfo, str]:
    gateway = request.app[GATEWAY]
    info = gateway.router.model(request.match_info["model"])
    version = request.match_info.get("version", "")
    info.check_version(version)
    return gateway, info, version


async def model_metadata(request: web.Request) -> web.Response:
    _, info, version = _model(request)
    return web.json_response(info.metadata(version))


async def model_ready(request: web.Request) -> web.Response:
    gateway, info, _ = _model(request)
    return web.Response(status=200 if gateway.router.ready(info.name) else 503)


async def model_config(request: web.Request) -> web.Response:
    _, info, _ = _model(request)
    return web.json_response(info.config)


async def model_statistics(request: web.Request) -> web.Response:
    """Triton's statistics extension: every model (``/v2/models/stats``) or one model or version."""
    gateway = request.app[GATEWAY]
    if "model" not in request.match_info:
        visible = visible_models(gateway.tenants, request.headers.get("Authorization"))
        return web.json_response(gateway.statistics_for(visible=visible))
    _, info, version = _model(request)
    return web.json_response(gateway.statistics_for(info.name, version))


async def repository_index(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    router = gateway.router
    visible = visible_models(gateway.tenants, request.headers.get("Authorization"))
    return web.json_response(
        [
            {"name": m.name, "version": v, "state": "READY" if router.ready(m.name) else "UNAVAILABLE"}
            for m in router.catalog.values()
            if visible is None or m.name in visible
            for v in m.versions
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# -- operations -------------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[GATEWAY].status())


async def usage(request: web.Request) -> web.Response:
    """Usage and spend per tenant: all of them for an admin key, a tenant's own for its key."""
    tenants, state = request.app[GATEWAY].tenants, request.app[GATEWAY].state  # state: the fleet's, with Redis
    if not tenants.enabled:
        raise ModelNotFound("no tenants are configured")
    authorization = request.headers.get("Authorization")
    try:
        tenants.authenticate_admin(authorization)
        return web.json_response(await state.usage())
    except RailgateError:
        tenant = tenants.authenticate(authorization)
        return web.json_response(await state.usage(only=tenant.name))


def _artifacts_app(config: GatewayConfig) -> web.Application:
    """Model files for edge devices, under ``/v1/models/`` (the artifacts family: mounted even when
    nothing is exportable, so every path there answers by its access level)."""
    app = web.Application()
    if config.artifacts.exportable:
        repository = Path(config.artifacts.repository or config.local.repository)
        signer = artifacts.load_signer(config.artifacts.signing_key_file)
        artifacts.add_routes(app, repository, config.artifacts.exportable, prefix="", signer=signer)
    return app


# Each handler's route family (fronts/access.py); the sub-apps are registered whole in create_app.
_FAMILIES: dict[object, Family] = {
    live: Family.HEALTH,
    ready: Family.HEALTH,
    server_metadata: Family.METADATA,
    repository_index: Family.METADATA,
    model_statistics: Family.METADATA,
    model_metadata: Family.METADATA,
    model_ready: Family.METADATA,
    model_config: Family.METADATA,
    infer: Family.INFERENCE,
    metrics: Family.METRICS,
    status: Family.STATUS,
    usage: Family.USAGE,
}
