"""The aiohttp application: the KServe v2 routes, one error middleware, and ``railgate serve``.

Handlers stay thin: decode (protocol/), admit (deadline, validation), hand to the pipeline,
encode the reply in the request's own encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import artifacts
from gateway.config import PRIORITIES, ConfigError, GatewayConfig, Listen, load_config
from gateway.openapi import openapi_route
from gateway.routing.policy import POLICIES, Route
from gateway.service import Gateway
from gateway.tenants import Tenant
from railcore.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    Overloaded,
    PayloadTooLarge,
    RailgateError,
    RequestTimeout,
)
from railcore.errors import ModelNotFound as NotFound
from railcore.protocol.codec import HEADER_LENGTH, DecodeLimits, decode_request, encode_response
from railcore.protocol.types import InferResponse, Tensor
from railcore.web import errors_middleware

log = logging.getLogger("railgate.server")

VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "msgpack_tensor_data", "latency_budget"]
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
DECODE_LIMITS: web.AppKey[DecodeLimits] = web.AppKey("decode_limits", DecodeLimits)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


def _count_failed_inference(request: web.Request, exc: RailgateError) -> None:
    if request.path.endswith("/infer"):
        model = request.match_info.get("model", "")
        backend = exc.headers.get("X-Served-By", "none")
        request.app[GATEWAY].metrics.requests.labels(model, str(exc.status), backend).inc()


# -- server and model endpoints ----------------------------------------------------------------


async def server_metadata(request: web.Request) -> web.Response:
    return _json({"name": "railgate", "version": VERSION, "extensions": EXTENSIONS})


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[GATEWAY].ready() else 503)


def _model(request: web.Request):
    gateway = request.app[GATEWAY]
    info = gateway.router.model(request.match_info["model"])
    version = request.match_info.get("version", "")
    info.check_version(version)
    return gateway, info, version


async def model_metadata(request: web.Request) -> web.Response:
    _, info, version = _model(request)
    return _json(info.metadata(version))


async def model_ready(request: web.Request) -> web.Response:
    gateway, info, _ = _model(request)
    return web.Response(status=200 if gateway.router.ready(info.name) else 503)


async def model_config(request: web.Request) -> web.Response:
    _, info, _ = _model(request)
    return _json(info.config)


async def repository_index(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return _json(
        [
            {"name": m.name, "version": v, "state": "READY" if gateway.router.ready(m.name) else "UNAVAILABLE"}
            for m in gateway.router.catalog.values()
            for v in m.versions
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# -- operations -------------------------------------------------------------------------------


@web.middleware
async def admin_middleware(request: web.Request, handler) -> web.StreamResponse:
    """``/admin/*`` needs an admin key once tenants or admin keys are configured; model artifacts
    (``/v1/models/*``) need a tenant's key once tenants are configured."""
    tenants = request.app[GATEWAY].tenants
    if request.path.startswith("/admin/") and tenants.admin_enabled:
        tenants.authenticate_admin(request.headers.get("Authorization"))
    elif request.path.startswith("/v1/models/") and tenants.enabled:
        tenants.authenticate(request.headers.get("Authorization"))
    return await handler(request)


async def status(request: web.Request) -> web.Response:
    return _json(request.app[GATEWAY].status())


async def admin_reload(request: web.Request) -> web.Response:
    try:
        changes = await request.app[GATEWAY].reload()
    except (ConfigError, ValueError) as exc:
        raise BadRequest(f"reload refused, the hub table is unchanged: {exc}") from exc
    return _json(changes)


async def admin_drain(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    name = request.match_info["hub"]
    try:
        backend = gateway.drain(name) if request.method == "POST" else gateway.undrain(name)
    except KeyError:
        hubs = ", ".join(b.name for b in gateway.backends if b.kind == "hub") or "none"
        raise NotFound(f"no hub named {name!r}; hubs: {hubs}") from None
    return _json({"hub": name, "draining": request.method == "POST", "inflight": backend.inflight})


# -- inference ------------------------------------------------------------------------------------


def _budget_s(request: web.Request, parameters: dict[str, Any], gateway: Gateway) -> float:
    """The request's latency budget in seconds: the tighter of the header and the v2 timeout (us)."""
    deadlines = gateway.config.deadlines
    budget_s = deadlines.default_budget_ms / 1000
    header = request.headers.get("X-Latency-Budget-Ms")
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise BadRequest(f"X-Latency-Budget-Ms must be a non-negative number of milliseconds, got {header!r}")
        budget_s = value / 1000
    timeout_us = parameters.get("timeout")
    if timeout_us is not None:
        number = isinstance(timeout_us, int | float) and not isinstance(timeout_us, bool)
        if not number or (isinstance(timeout_us, float) and math.isnan(timeout_us)) or timeout_us < 0:
            shown = repr(timeout_us)[:40]
            raise BadRequest(f"parameter 'timeout' must be a non-negative number of microseconds, got {shown}")
        # Capped before dividing: a 400-digit integer is a valid JSON number but no float.
        timeout_s = min(timeout_us, deadlines.max_budget_ms * 1000) / 1e6
        budget_s = min(budget_s, timeout_s) if header is not None else timeout_s
    return min(budget_s, deadlines.max_budget_ms / 1000)


_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _route(request: web.Request, gateway: Gateway, tenant: Tenant | None = None) -> Route:
    """Routing constraints from ``X-Route-Policy`` and ``X-Allowed-Regions`` (comma-separated),
    within the tenant's residency: a header may narrow it, never widen it."""
    policy = request.headers.get("X-Route-Policy", gateway.config.routing.default_policy).strip()
    if policy not in POLICIES:
        raise BadRequest(f"X-Route-Policy {policy!r} is not a policy; valid: {', '.join(POLICIES)}")
    raw = request.headers.get("X-Allowed-Regions")
    regions: frozenset[str] | None = None
    if raw is not None:
        asked = [r.strip() for r in raw.split(",")]
        bad = [r for r in asked if not _REGION.match(r)]
        if bad:
            raise BadRequest(
                f"X-Allowed-Regions must be a comma-separated list of region names, got {raw!r} (bad: {bad[0]!r})"
            )
        regions = frozenset(asked)
    if tenant is not None and tenant.spec.regions:
        allowed = frozenset(tenant.spec.regions)
        if regions is not None and not regions <= allowed:
            outside = ", ".join(sorted(regions - allowed))
            raise Forbidden(
                f"tenant {tenant.name!r} may not use region(s) {outside}; its residency is {sorted(allowed)}"
            )
        regions = regions or allowed
    return Route(policy, regions)


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit alone takes '²' and Arabic-Indic digits
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


async def infer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.refusing:
        raise Overloaded(
            "gateway is shutting down; retry on another instance", status=503, headers={"Retry-After": "1"}
        )
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    tenant = gateway.tenants.authenticate(request.headers.get("Authorization")) if gateway.tenants.enabled else None
    limit = gateway.config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the limit of {limit} bytes")
    info = gateway.router.model(request.match_info["model"])
    version = request.match_info.get("version", "")
    info.check_version(version)
    if tenant is not None:
        gateway.tenants.check_model(tenant, info.name)
    route = _route(request, gateway, tenant)
    priority = _priority(request, tenant)
    try:
        async with asyncio.timeout(gateway.config.limits.body_timeout_s):
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {gateway.config.limits.body_timeout_s:g} s"
        ) from None
    req = decode_request(
        body,
        content_type=request.content_type,
        header_length=_header_length(request),
        model=info.name,
        version=version,
        limits=request.app[DECODE_LIMITS],
    )
    deadline = arrived + _budget_s(request, req.parameters, gateway)
    if loop.time() >= deadline:
        raise DeadlineExceeded("latency budget already spent on arrival; the request was not sent to a backend")
    rows = info.validate(req, text_bytes=gateway.config.limits.bytes_must_be_utf8)
    if tenant is not None:
        gateway.tenants.admit(tenant, info.name, rows)
    transport = request.transport
    result = await gateway.pipeline.submit(
        req,
        info,
        rows,
        deadline,
        gone=lambda: transport is None or transport.is_closing(),
        route=route,
        priority=priority,
    )
    datatypes = {t.name: t.datatype for t in info.outputs}
    names = [o.name for o in req.outputs] or [o.name for o in info.outputs]
    outputs = [Tensor(n, datatypes[n], result.outputs[n].shape, result.outputs[n]) for n in names]
    response = InferResponse(info.name, version or info.versions[-1], outputs, id=req.id)
    chunks, headers = encode_response(response, req)
    metrics = gateway.metrics
    metrics.requests.labels(info.name, "200", result.backend).inc()
    metrics.latency.labels(info.name).observe(loop.time() - arrived)
    if tenant is not None:
        backend = gateway.router.backend(result.backend)
        price = gateway.router.price_now(backend, info.name) if backend is not None else 0.0
        gateway.tenants.record(tenant, rows, price)
        metrics.tenant_inferences.labels(tenant.name, info.name).inc(rows)
        metrics.tenant_spend.labels(tenant.name).inc(price * rows / 1000)
    headers.update(
        {
            "X-Served-By": result.backend,
            "X-Batch-Size": str(result.batch_size),
            "X-Route-Reason": result.route_reason,
            "X-Queue-Ms": f"{result.queue_s * 1000:.3f}",
            "X-Backend-Ms": f"{result.backend_s * 1000:.3f}",
        }
    )
    return web.Response(body=chunks[0] if len(chunks) == 1 else b"".join(chunks), headers=headers)


def _priority(request: web.Request, tenant: Tenant | None) -> str:
    priority = request.headers.get("X-Priority", tenant.spec.priority if tenant else "normal").strip().lower()
    if priority not in PRIORITIES:
        raise BadRequest(f"X-Priority {priority!r} is not a priority; valid: {', '.join(PRIORITIES)}")
    return priority


async def usage(request: web.Request) -> web.Response:
    """Usage and spend per tenant: all of them for an admin key, a tenant's own for its key."""
    tenants = request.app[GATEWAY].tenants
    if not tenants.enabled:
        raise NotFound("no tenants are configured")
    authorization = request.headers.get("Authorization")
    try:
        tenants.authenticate_admin(authorization)
        return _json(tenants.usage())
    except RailgateError:
        tenant = tenants.authenticate(authorization)
        return _json(tenants.usage(only=tenant.name))


def create_app(config: GatewayConfig, config_path: Path | None = None) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware("gateway", _count_failed_inference), admin_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    gateway = Gateway(config, config_path)
    app[GATEWAY] = gateway
    limits = config.limits
    app[DECODE_LIMITS] = DecodeLimits(
        max_inputs=limits.max_inputs, max_elements=limits.max_elements, max_bytes_element=limits.max_bytes_element
    )

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
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
        r.add_post(prefix + "/infer", infer)
    r.add_get("/metrics", metrics)
    if config.artifacts.exportable:
        repository = Path(config.artifacts.repository or config.local.repository)
        artifacts.add_routes(app, repository, config.artifacts.exportable)
    r.add_get("/openapi.json", openapi_route(lambda: gateway.router.catalog))
    r.add_get("/status", status)
    r.add_get("/v1/usage", usage)
    r.add_post("/admin/reload", admin_reload)
    r.add_post("/admin/hubs/{hub}/drain", admin_drain)
    r.add_delete("/admin/hubs/{hub}/drain", admin_drain)
    return app


# -- railgate serve -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: local backend only)")
    parser.add_argument("--host", default=None, help="overrides listen.host")
    parser.add_argument("--port", type=int, default=None, help="overrides listen.port")
    parser.add_argument("--repository", default=None, help="overrides local.repository")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)


def resolve_config(args: argparse.Namespace) -> GatewayConfig:
    import dataclasses

    config = load_config(args.config)
    listen = Listen(args.host or config.listen.host, args.port if args.port is not None else config.listen.port)
    local = config.local
    if args.repository:
        local = dataclasses.replace(local, repository=args.repository)
    return dataclasses.replace(config, listen=listen, local=local)


def run(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"railgate serve: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _run_workers(args, config)
    app = create_app(config, args.config)
    try:
        uvloop.run(_serve(app, config.listen, config.shutdown_grace_s, config.drain_s, reuse_port=args.reuse_port))
    except RailgateError as exc:
        print(f"railgate serve: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"railgate serve: cannot listen on {config.listen.host}:{config.listen.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _free_port(host: str) -> int:
    """A port nobody listens on now, for workers asked to share port 0."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run_workers(args: argparse.Namespace, config: GatewayConfig) -> int:
    """N ``railgate serve`` processes on one port (SO_REUSEPORT: the kernel spreads connections).
    Signals are passed on; each worker drains the same way; the exit status is the worst one."""
    import signal
    import subprocess

    port = config.listen.port or _free_port(config.listen.host)
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--workers", "1", "--reuse-port"]
    argv += ["--host", config.listen.host, "--port", str(port), "--log-level", args.log_level]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.repository:
        argv += ["--repository", args.repository]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]

    def forward(sig: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    banners = [w.stdout.readline() for w in workers if w.stdout is not None]
    if not all("railgate serving" in b for b in banners):
        forward(signal.SIGTERM, None)
        return max(w.wait() for w in workers) or 1
    print(f"railgate serving http://{config.listen.host}:{port} workers={args.workers}", flush=True)
    return max(w.wait() for w in workers)


async def _serve(
    app: web.Application, listen: Listen, grace_s: float, drain_s: float, reuse_port: bool = False
) -> None:
    import signal

    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port, backlog=1024, reuse_port=reuse_port or None)
        await site.start()
        server = site._server
        port = server.sockets[0].getsockname()[1] if server is not None else listen.port  # type: ignore[attr-defined]
        gateway = app[GATEWAY]
        models = ",".join(sorted(gateway.router.catalog)) or "none"
        backends = ",".join(f"{b.name}({'up' if b.healthy else 'down'})" for b in gateway.backends)
        print(f"railgate serving http://{listen.host}:{port} models={models} backends={backends}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()
        if gateway.config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: _spawn_reload(gateway, reloads))
        await stop.wait()
        # Graceful drain: readiness fails at once; the listener closes; every accepted request
        # (queued or in flight) is answered within the grace period; then the backends close.
        gateway.draining = True
        log.info("event=draining active=%d grace_s=%.0f", gateway.pipeline.active, grace_s)
        for task in reloads:
            task.cancel()
        # For a moment the listener stays open while every reply says "Connection: close", so
        # clients with pooled connections move off them instead of racing a closing socket. Then
        # new requests are refused (503, Retry-After) rather than reset, until the accepted ones
        # are answered; only then does the listener close.
        await asyncio.sleep(min(drain_s, grace_s))  # the drain window itself
        gateway.refusing = True
        give_up = loop.time() + grace_s
        while gateway.pipeline.active and loop.time() < give_up:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    log.info("event=stopped")


def _spawn_reload(gateway: Gateway, tasks: set[asyncio.Task[None]]) -> None:
    async def reload() -> None:
        try:
            changes = await gateway.reload()
            log.info("event=sighup_reload changes=%s", changes)
        except (ConfigError, ValueError) as exc:
            log.error("event=reload_refused error=%s", exc)

    task = asyncio.get_running_loop().create_task(reload())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
