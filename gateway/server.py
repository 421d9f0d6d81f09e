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

from gateway.config import ConfigError, GatewayConfig, Listen, load_config
from gateway.errors import BadRequest, DeadlineExceeded, PayloadTooLarge, RailgateError
from gateway.errors import ModelNotFound as NotFound
from gateway.protocol.codec import HEADER_LENGTH, DecodeLimits, decode_request, encode_error, encode_response
from gateway.protocol.msgpack_codec import is_msgpack
from gateway.protocol.types import Encoding, InferResponse, Tensor
from gateway.routing.policy import POLICIES, Route
from gateway.service import Gateway

log = logging.getLogger("railgate.server")

VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "msgpack_tensor_data", "latency_budget"]
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
DECODE_LIMITS: web.AppKey[DecodeLimits] = web.AppKey("decode_limits", DecodeLimits)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


def _error_response(request: web.Request, status: int, message: str, headers: dict[str, str]) -> web.Response:
    encoding = Encoding.MSGPACK if is_msgpack(request.content_type) else Encoding.JSON
    body, content_type = encode_error(message, encoding)
    return web.Response(status=status, body=body, headers={**headers, "Content-Type": content_type})


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Map every error to ``{"error": "..."}`` with its status, once, here."""
    try:
        return await handler(request)
    except RailgateError as exc:
        return _error_response(request, exc.status, exc.message, exc.headers)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error_response(request, 413, f"body is larger than the limit: {exc.text}", {})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(request, exc.status, exc.reason or exc.text or "error", {})
    except Exception:
        log.exception("event=unhandled path=%s", request.path)
        return _error_response(request, 500, "internal error in the gateway", {})


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
        if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) or timeout_us < 0:
            raise BadRequest(f"parameter 'timeout' must be a non-negative number of microseconds, got {timeout_us!r}")
        budget_s = min(budget_s, timeout_us / 1e6) if header is not None else timeout_us / 1e6
    return min(budget_s, deadlines.max_budget_ms / 1000)


_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _route(request: web.Request, gateway: Gateway) -> Route:
    """Routing constraints from ``X-Route-Policy`` and ``X-Allowed-Regions`` (comma-separated)."""
    policy = request.headers.get("X-Route-Policy", gateway.config.routing.default_policy).strip()
    if policy not in POLICIES:
        raise BadRequest(f"X-Route-Policy {policy!r} is not a policy; valid: {', '.join(POLICIES)}")
    raw = request.headers.get("X-Allowed-Regions")
    if raw is None:
        return Route(policy)
    regions = [r.strip() for r in raw.split(",")]
    bad = [r for r in regions if not _REGION.match(r)]
    if bad:
        raise BadRequest(
            f"X-Allowed-Regions must be a comma-separated list of region names, got {raw!r} (bad: {bad[0]!r})"
        )
    return Route(policy, frozenset(regions))


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {raw!r}")
    return int(raw)


async def infer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    limit = gateway.config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the limit of {limit} bytes")
    info = gateway.router.model(request.match_info["model"])
    version = request.match_info.get("version", "")
    info.check_version(version)
    body = await request.read()
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
    rows = info.validate(req)
    route = _route(request, gateway)
    transport = request.transport
    result = await gateway.pipeline.submit(
        req, info, rows, deadline, gone=lambda: transport is None or transport.is_closing(), route=route
    )
    datatypes = {t.name: t.datatype for t in info.outputs}
    names = [o.name for o in req.outputs] or [o.name for o in info.outputs]
    outputs = [Tensor(n, datatypes[n], result.outputs[n].shape, result.outputs[n]) for n in names]
    response = InferResponse(info.name, version or info.versions[-1], outputs, id=req.id)
    chunks, headers = encode_response(response, req)
    status = "200"
    gateway.metrics.requests.labels(info.name, status, result.backend).inc()
    gateway.metrics.latency.labels(info.name).observe(loop.time() - arrived)
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


@web.middleware
async def count_errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Count failed inference requests by status (successes are counted in ``infer``)."""
    response = await handler(request)
    if response.status >= 400 and request.path.endswith("/infer"):
        model = request.match_info.get("model", "")
        request.app[GATEWAY].metrics.requests.labels(model, str(response.status), "none").inc()
    return response


def create_app(config: GatewayConfig, config_path: Path | None = None) -> web.Application:
    app = web.Application(
        middlewares=[count_errors_middleware, errors_middleware], client_max_size=config.limits.max_body_bytes
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

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
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
    r.add_get("/status", status)
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
    app = create_app(config, args.config)
    try:
        uvloop.run(_serve(app, config.listen))
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


async def _serve(app: web.Application, listen: Listen) -> None:
    import signal

    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1] if site._server else listen.port  # type: ignore[union-attr]
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
        for task in reloads:
            task.cancel()
    finally:
        await runner.cleanup()


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
