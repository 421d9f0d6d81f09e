"""A misbehaving hub for fault tests: a proxy in front of a real Triton that breaks its infer calls.

This is a named fake of a failure that cannot be ordered from a real hub on demand. Everything
but ``POST .../infer`` (health, repository index, metadata, config, statistics) passes through to
the real hub, so the gateway discovers it and sends it traffic; each infer call then fails by mode:

    blackhole   accept the request and never answer
    http500     answer 500 with a Triton-style error
    garbage     answer 200 with bytes that are not a valid reply
    cut         forward the real reply but close the connection half-way through its body

The first ``--after-calls`` infer calls pass through untouched (warm-up and real traffic), so the
failure starts mid-run, on a hub the gateway already trusts.

    python -m bench.faults --upstream PORT --mode MODE [--after-calls N] [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import aiohttp
from aiohttp import web

MODES = ("blackhole", "http500", "garbage", "cut")


def make_app(upstream: str, mode: str, after_calls: int = 0) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    hanging: set[asyncio.Future[None]] = set()
    calls = [0]

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        for future in hanging:
            future.cancel()
        await app["session"].close()

    async def forward(request: web.Request) -> aiohttp.ClientResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        return await app["session"].request(request.method, upstream + request.path_qs, data=body, headers=headers)

    async def handle(request: web.Request) -> web.StreamResponse:
        is_infer = request.method == "POST" and request.path.endswith("/infer")
        if is_infer:
            calls[0] += 1
            is_infer = calls[0] > after_calls
        if is_infer and mode == "blackhole":
            await request.read()
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            hanging.add(never)
            await never  # cancelled only when the fake stops or the client goes away
        if is_infer and mode == "http500":
            await request.read()
            return web.json_response({"error": "injected failure: internal error"}, status=500)
        if is_infer and mode == "garbage":
            await request.read()
            return web.Response(body=os.urandom(333), headers={"Inference-Header-Content-Length": "7"})
        async with await forward(request) as reply:
            body = await reply.read()
            headers = {
                k: v
                for k, v in reply.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")
            }
        if is_infer and mode == "cut":
            response = web.StreamResponse(status=reply.status, headers=headers)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-response
            return response
        return web.Response(status=reply.status, body=body, headers=headers)

    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


async def _serve(upstream_port: int, mode: str, port: int, after_calls: int) -> None:
    # A short shutdown: the blackholed calls are meant to hang, not to hold the fake's exit.
    app = make_app(f"http://127.0.0.1:{upstream_port}", mode, after_calls)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    actual = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"faulty hub listening 127.0.0.1:{actual} mode={mode} -> 127.0.0.1:{upstream_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A hub whose infer calls fail in a chosen way (fault tests).")
    parser.add_argument("--upstream", type=int, required=True, help="the real hub's HTTP port")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--after-calls", type=int, default=0, help="infer calls passed through before failing")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.upstream, args.mode, args.port, args.after_calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
