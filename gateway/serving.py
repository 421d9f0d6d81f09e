"""``railgate serve``: arguments, the ``--workers N`` supervisor, signals and the graceful drain.

One worker runs the app on aiohttp's public runner API (``AppRunner``, ``TCPSite``,
``runner.addresses``). SIGTERM or SIGINT starts the drain; SIGHUP re-reads the hub table. With
``--workers N`` this process only supervises: N workers share the port (SO_REUSEPORT), each
receives the signals and drains the same way.

``listen.tls`` makes the port HTTPS (and the gRPC port TLS): the context is built here, from files the
config load already checked. ``listen.ops`` (or ``--ops-port``) serves the ops app (``/metrics``,
``/status``, ``/dashboard``, ``/admin/*``) on a listener of its own; with ``--workers N`` each worker
has its own ops port (``port + i``, or any free one for port 0), since each worker keeps its own
metrics and state: a scrape of a shared port would read a different worker each time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import OPS_HOST, ConfigError, GatewayConfig, Listen, OpsListen, load_config
from gateway.listener import close_without_resets, listening_socket
from railcore.errors import RailgateError
from railcore.leanhttp import LeanSite
from railcore.tls import server_context

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.fronts.grpc import GrpcServer
    from gateway.gateway import Gateway

log = logging.getLogger("railgate.server")
# Past the drain, how long the listener may take to empty its accept queue and answer what it accepted.
LISTENER_CLOSE_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: local backend only)")
    parser.add_argument("--host", default=None, help="overrides listen.host")
    parser.add_argument("--port", type=int, default=None, help="overrides listen.port")
    parser.add_argument("--grpc-port", type=int, default=None, help="overrides listen.grpc_port (the v2 gRPC API)")
    parser.add_argument(
        "--ops-port",
        type=int,
        default=None,
        help="serve /metrics, /status, /dashboard, /admin/* here only (listen.ops)",
    )
    parser.add_argument("--repository", default=None, help="overrides local.repository")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host-shared", action="store_true", help=argparse.SUPPRESS)  # a worker: state.host_shared


def resolve_config(args: argparse.Namespace) -> GatewayConfig:
    """The config file's settings with the command line's overrides."""
    config = load_config(args.config)
    ops = config.listen.ops
    if args.ops_port is not None:
        ops = OpsListen(args.ops_port, ops.host if ops is not None else OPS_HOST)
    listen = dataclasses.replace(
        config.listen,
        host=args.host or config.listen.host,
        port=args.port if args.port is not None else config.listen.port,
        grpc_port=args.grpc_port if args.grpc_port is not None else config.listen.grpc_port,
        ops=ops,
    )
    local = config.local
    if args.repository:
        local = dataclasses.replace(local, repository=args.repository)
    state = dataclasses.replace(config.state, host_shared=True) if args.host_shared else config.state
    return dataclasses.replace(config, listen=listen, local=local, state=state)


def run(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"railgate serve: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        if config.tenants and config.state.redis_url is None and config.state.data_dir is None:
            # Each worker would hold the tenants' limits in its own memory: N x every rate and quota.
            print(
                f"railgate serve: --workers {args.workers} with tenants needs shared limits: set state.redis_url "
                "(every host) or state.data_dir (this host's workers share its ledger), or run one worker",
                file=sys.stderr,
            )
            return 2
        return _run_workers(args, config)
    from gateway.fronts.http import create_app  # here, so that building the CLI's parser stays light

    app = create_app(config, args.config)
    try:
        uvloop.run(serve(app, config.listen, config.shutdown_grace_s, config.drain_s, reuse_port=args.reuse_port))
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
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run_workers(args: argparse.Namespace, config: GatewayConfig) -> int:
    """N ``railgate serve`` processes on one port (SO_REUSEPORT: the kernel spreads connections).
    Signals are passed on; each worker drains the same way; the exit status is the worst one."""
    port = config.listen.port or _free_port(config.listen.host)
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--workers", "1", "--reuse-port"]
    if config.state.redis_url is None and config.state.data_dir is not None:
        argv.append("--host-shared")  # the workers share the data directory's ledger and limits
    argv += ["--host", config.listen.host, "--port", str(port), "--log-level", args.log_level]
    grpc_port = config.listen.grpc_port
    if grpc_port is not None:
        grpc_port = grpc_port or _free_port(config.listen.host)
        argv += ["--grpc-port", str(grpc_port)]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.repository:
        argv += ["--repository", args.repository]
    ops = config.listen.ops
    workers = []
    for i in range(args.workers):
        ops_argv = ["--ops-port", str(ops.port + i if ops.port else 0)] if ops is not None else []
        workers.append(subprocess.Popen(argv + ops_argv, stdout=subprocess.PIPE, text=True))

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
    grpc = f" grpc={config.listen.host}:{grpc_port}" if grpc_port is not None else ""
    if ops is not None:  # each worker's own ops address, from its banner
        found = [re.search(r" ops=(\S+)", b) for b in banners]
        grpc += " ops=" + ",".join(m.group(1) for m in found if m)
    scheme = "https" if config.listen.tls is not None else "http"
    print(f"railgate serving {scheme}://{config.listen.host}:{port} workers={args.workers}{grpc}", flush=True)
    return max(w.wait() for w in workers)


# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Once the gateway serves, move every object alive (modules, catalogs, clients: ~75,000) out of the
    collector's reach and collect the young generation less often. A request allocates a few hundred
    containers, so the default thresholds ran a collection every few requests, and the older generations'
    walks over the start-up heap took tens of milliseconds each here (a full one ~160 ms on 2 busy cores)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(app: web.Application, listen: Listen, grace_s: float, drain_s: float, reuse_port: bool = False) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain: print the banner once listening."""
    from aiohttp import web

    from gateway.fronts.http import GATEWAY, OPS_APP

    ssl_context = server_context(listen.tls, "listen.tls") if listen.tls is not None else None
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    grpc_server: GrpcServer | None = None
    ops_runner: web.AppRunner | None = None
    try:
        # Our own listening socket, so that the drain can close it without resetting its backlog. SockSite
        # listens on it again, with its own backlog (128 unless told): it is told the same.
        sock = listening_socket(listen.host, listen.port, backlog=listen.backlog, reuse_port=reuse_port)
        gateway = app[GATEWAY]
        site: web.SockSite | LeanSite
        if listen.lean_http and gateway.tracer is None:
            from gateway.fronts.lean import lean_site

            site = lean_site(runner, app)
            await site.start_socket(sock, ssl_context, listen.backlog)
        else:
            site = web.SockSite(runner, sock, ssl_context=ssl_context, backlog=listen.backlog)
            await site.start()
        port = sock.getsockname()[1]
        banner = ""
        if listen.grpc_port is not None:
            from gateway.fronts.grpc import GrpcServer  # grpc loads only when its front is asked for

            grpc_server = GrpcServer(gateway, listen.host, listen.grpc_port, reuse_port=reuse_port, tls=listen.tls)
            await grpc_server.start()
            banner = f" grpc={listen.host}:{grpc_server.port}"
        if listen.ops is not None:
            ops_runner, ops_address = await _start_ops(app[OPS_APP], listen.ops, ssl_context)
            banner += f" ops={ops_address}"
        settle_garbage_collector()
        models = ",".join(sorted(gateway.router.catalog)) or "none"
        backends = ",".join(f"{b.name}({'up' if b.healthy else 'down'})" for b in gateway.backends)
        scheme = "https" if ssl_context is not None else "http"
        print(
            f"railgate serving {scheme}://{listen.host}:{port} models={models} backends={backends}{banner}", flush=True
        )
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
        await drain(gateway, grace_s, drain_s)
        await close_without_resets(runner, site, sock, timeout_s=LISTENER_CLOSE_S)
        if isinstance(site, LeanSite):
            await site.close(grace_s)
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace_s)
        if ops_runner is not None:  # after the drain: the ops port answers /metrics and /status throughout
            await ops_runner.cleanup()
        await runner.cleanup()
    log.info("event=stopped")


async def _start_ops(ops_app: web.Application, ops: OpsListen, ssl_context: ssl.SSLContext | None):
    """The ops listener, with the public port's TLS settings; its runner and ``host:port``."""
    from aiohttp import web

    runner = web.AppRunner(ops_app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, ops.host, ops.port, ssl_context=ssl_context, backlog=128)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # uvloop's strerror repeats the address
        raise RailgateError(f"cannot listen for ops (listen.ops) on {ops.host}:{ops.port}: {reason}") from None
    port = runner.addresses[0][1] if runner.addresses else ops.port
    return runner, f"{ops.host}:{port}"


async def drain(gateway: Gateway, grace_s: float, drain_s: float) -> None:
    """Graceful drain: readiness fails at once; every accepted request (queued or in flight) is
    answered within ``grace_s``; the caller then closes the listener and the backends.

    For ``drain_s`` the listener stays open while every reply says "Connection: close", so clients
    with pooled connections move off them instead of racing a closing socket. Then new requests
    are refused (503, Retry-After) rather than reset, until the accepted ones are answered; the
    caller then closes the listener without resetting its backlog (``listener.close_without_resets``).
    """
    gateway.draining = True
    log.info("event=draining active=%d grace_s=%.0f", gateway.pipeline.active, grace_s)
    await asyncio.sleep(min(drain_s, grace_s))  # the drain window itself
    gateway.service.refusing = True
    with contextlib.suppress(TimeoutError):  # past the grace period the listener closes regardless
        async with asyncio.timeout(grace_s):
            await gateway.pipeline.wait_idle()


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
