"""``python -m bench.forward_floor``: the floor for any Python gateway that calls a hub per request.

A bare aiohttp server on uvloop that reads each POST's body and sends it, unchanged, to one hub with
the gateway's own lean hub client (``gateway.backends.hubhttp``), then answers the hub's reply as it
came: no decoding, validation, routing, batching, deadline, tenant or metric. Its CPU per request
is what railgate's is compared to where every request is its own batch (c=1): any Python front that
forwards on this stack spends at least this much, so a target below it cannot be met by trimming.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop
from aiohttp import web

from gateway.backends.hubhttp import HubConnections, origin

_FORWARDED = ("Content-Type", "Inference-Header-Content-Length")
_REPLY_HEADERS = (b"content-type", b"inference-header-content-length")


def app(hub_url: str) -> web.Application:
    hub = HubConnections(origin(hub_url, None), limit=256)
    authority = hub.origin.authority

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        head = [f"{request.method} {request.path_qs} HTTP/1.1\r\nHost: {authority}\r\n"]
        head += [f"{name}: {request.headers[name]}\r\n" for name in _FORWARDED if name in request.headers]
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        reply = await hub.request(["".join(head).encode("latin-1"), body], asyncio.get_running_loop().time() + 30.0)
        headers = {
            name.decode(): value.decode("latin-1") for name in _REPLY_HEADERS if (value := reply.headers.get(name))
        }
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    application = web.Application()
    # Any method and path, as it came (tritonclient asks for the model's metadata before it infers).
    application.router.add_route("*", "/{path:.*}", forward)
    return application


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forward_floor", description=__doc__.splitlines()[0])
    p.add_argument("--hub", required=True, help="the hub's HTTP URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    async def serve() -> None:
        runner = web.AppRunner(app(args.hub), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print(f"forward floor listening 127.0.0.1:{runner.addresses[0][1]}", flush=True)
        try:
            await asyncio.Event().wait()  # until SIGTERM ends the process
        finally:
            await runner.cleanup()

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
