"""``railgate edge``: the firmware-facing server on the device; ``railgate edge sync``: one model sync.

The same KServe v2 routes as the gateway (``/v2``, health, model metadata/config/ready, ``infer`` in
v2 JSON, the binary tensor extension or msgpack, replies in the request's encoding) and ``/metrics``,
on loopback TCP or a Unix socket. Handlers are thin: decode (railcore.protocol), hand to the
``EdgeRuntime``, encode. Request headers: ``X-Latency-Budget-Ms`` (or the v2 ``timeout`` parameter in
microseconds; the tighter wins), ``X-Offload-Policy`` (auto | local | remote); ``X-Route-Policy``,
``X-Allowed-Regions`` and ``Authorization`` go on to the gateway with an offloaded call. Reply headers:
``X-Served-By`` (``local``, or the gateway's own X-Served-By), ``X-Offload-Reason``, ``X-Edge-Path``
(local | remote), ``X-Edge-Latency-Ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.answer import answer
from edge.config import EdgeConfig, Listen, load_edge_config
from edge.firmware import FirmwareSite
from edge.runtime import EdgeRuntime
from edge.sync import sync_once
from railcore.errors import PayloadTooLarge, RailgateError
from railcore.progress import Progress
from railcore.protocol.codec import DecodeLimits
from railcore.settings import ConfigError
from railcore.web import errors_middleware

log = logging.getLogger("railgate.edge.server")

VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "msgpack_tensor_data", "latency_budget", "offload"]
RUNTIME: web.AppKey[EdgeRuntime] = web.AppKey("edge_runtime", EdgeRuntime)
DECODE_LIMITS: web.AppKey[DecodeLimits] = web.AppKey("edge_decode_limits", DecodeLimits)


# -- server and model endpoints ----------------------------------------------------------------


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "railgate-edge", "version": VERSION, "extensions": EXTENSIONS})


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[RUNTIME].ready() else 503)


async def _info(request: web.Request):
    info = await request.app[RUNTIME].model_info(request.match_info["model"])
    version = request.match_info.get("version", "")
    info.check_version(version)
    return info, version


async def model_metadata(request: web.Request) -> web.Response:
    info, version = await _info(request)
    return web.json_response(info.metadata(version))


async def model_ready(request: web.Request) -> web.Response:
    ready = request.app[RUNTIME].model_ready(request.match_info["model"])
    return web.Response(status=200 if ready else 503)


async def model_config(request: web.Request) -> web.Response:
    info, _ = await _info(request)
    return web.json_response(info.config)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# -- inference ------------------------------------------------------------------------------------


_SHUTDOWN_S = 10.0  # how long a lean-path call in flight may take to finish once the server stops


async def infer(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    limit = runtime.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the limit of {limit} bytes")
    body = await request.read()
    chunks, headers = await answer(
        runtime,
        request.app[DECODE_LIMITS],
        request.match_info["model"],
        request.match_info.get("version", ""),
        request.headers,
        request.content_type,
        body,
    )
    return web.Response(body=chunks[0] if len(chunks) == 1 else b"".join(chunks), headers=headers)


def create_app(runtime: EdgeRuntime, *, manage_runtime: bool = True) -> web.Application:
    """The firmware-facing app. With ``manage_runtime`` the app starts and closes the runtime."""
    app = web.Application(
        middlewares=[errors_middleware("edge runtime")], client_max_size=runtime.config.max_body_bytes
    )
    app[RUNTIME] = runtime
    app[DECODE_LIMITS] = DecodeLimits()
    if manage_runtime:

        async def start(app: web.Application) -> None:
            await runtime.start()

        async def stop(app: web.Application) -> None:
            await runtime.close()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
    r = app.router
    # The infer routes first: aiohttp tries the routes under one prefix in the order they were added, and
    # infer is the call that comes thousands of times a second (no route overlaps another).
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_post(prefix + "/infer", infer)
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
    r.add_get("/metrics", metrics)
    return app


# -- railgate edge [serve|sync] -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=("serve", "sync"), default="serve",
        help="serve (default): run the device's runtime server; sync: pull the configured models once and exit",
    )  # fmt: skip
    parser.add_argument("--config", type=Path, default=None, help="edge YAML config (default: offline, local only)")
    parser.add_argument("--host", default=None, help="overrides listen.host")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=None, help="overrides listen.port (TCP)")
    where.add_argument("--unix", default=None, help="serve on this Unix socket path instead of TCP")
    parser.add_argument("--repository", default=None, help="overrides repository")
    parser.add_argument("--gateway-url", default=None, help="overrides gateway_url")
    parser.add_argument("--log-level", default="INFO")


def resolve_config(args: argparse.Namespace) -> EdgeConfig:
    config = load_edge_config(args.config)
    listen = config.listen
    if args.unix:
        listen = Listen(listen.host, listen.port, args.unix)
    elif args.port is not None or args.host:
        port = args.port if args.port is not None else listen.port
        listen = Listen(args.host or listen.host, port, None if args.port is not None else listen.unix)
    changes: dict[str, Any] = {"listen": listen}
    if args.repository:
        changes["repository"] = args.repository
    if args.gateway_url:
        changes["gateway_url"] = args.gateway_url
    return dataclasses.replace(config, **changes)


def run(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"railgate edge: {exc}", file=sys.stderr)
        return 2
    if args.action == "sync":
        return _sync(config)
    try:
        uvloop.run(_serve(config))
    except RailgateError as exc:
        print(f"railgate edge: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"railgate edge: cannot listen on {_where(config.listen)}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _sync(config: EdgeConfig) -> int:
    if not config.gateway_url:
        print("railgate edge sync: gateway_url is not set (config or --gateway-url)", file=sys.stderr)
        return 2
    if not config.models:
        print("railgate edge sync: models is empty; list the models to pull from the gateway", file=sys.stderr)
        return 2
    progress = Progress("edge sync", len(config.models))  # to stderr; stdout keeps one line per model
    outcomes = asyncio.run(
        sync_once(
            config.gateway_url,
            Path(config.repository),
            config.models,
            config.sync.timeout_s,
            config.gateway_api_key,
            config.sync.trusted_keys,
            on_outcome=lambda o: progress.step(f"{o.model} {o.outcome}"),
            tls=config.gateway_tls,
        )
    )
    progress.done()
    for outcome in outcomes:
        print(outcome.line())
    return 0 if all(o.outcome in ("updated", "current") for o in outcomes) else 1


def _where(listen: Listen) -> str:
    return f"unix:{listen.unix}" if listen.unix else f"http://{listen.host}:{listen.port}"


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a previous run left behind; refuse to touch anything else or a live server."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise OSError(f"another server is already listening on {path}")


async def _serve(config: EdgeConfig) -> None:
    runtime = EdgeRuntime(config)
    app = create_app(runtime)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()  # starts the runtime: models verified, loaded and warmed up, first sync done
    unix = Path(config.listen.unix) if config.listen.unix else None
    fast: FirmwareSite | None = None
    try:
        if unix is not None:
            _clear_stale_socket(unix)
            # The firmware's socket: infer calls on the lean path, every other request to aiohttp (firmware.py).
            fast = FirmwareSite(runner, runtime, app[DECODE_LIMITS], str(unix))
            await fast.start()
            where = f"unix:{unix}"
        else:
            site = web.TCPSite(runner, config.listen.host, config.listen.port)
            await site.start()
            port = runner.addresses[0][1]  # the real one when listen.port is 0
            where = f"http://{config.listen.host}:{port}"
        print(f"railgate edge serving {where} {runtime.describe()}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if fast is not None:
            await fast.stop(_SHUTDOWN_S)
        await runner.cleanup()
        if unix is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix)


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.server``: the same as ``railgate edge``, before the subcommand is registered."""
    parser = argparse.ArgumentParser(prog="railgate edge", description="The on-device runtime (firmware-facing).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
