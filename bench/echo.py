"""``python -m bench.echo``: the floor for any Python front, measured beside the gateway in ``make bench``.

A bare aiohttp server on uvloop that reads each POST's body and answers a fixed body the size of the
gateway's reply to the digits model (a binary-extension header and 40 bytes of scores): no decoding,
no batching, no hub. Requests per CPU-second of this process are what railgate's are compared to.
"""

from __future__ import annotations

import argparse
import sys

import uvloop
from aiohttp import web

HEADER = (
    b'{"model_name":"digits","model_version":"1","outputs":[{"name":"scores","datatype":"FP32",'
    b'"shape":[1,10],"parameters":{"binary_data_size":40}}]}'
)
REPLY = HEADER + bytes(40)
REPLY_HEADERS = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(HEADER))}


async def echo(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, headers=REPLY_HEADERS)


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v2/models/{model}/infer", echo)
    return application


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    async def serve() -> None:
        runner = web.AppRunner(app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print(f"echo listening 127.0.0.1:{runner.addresses[0][1]}", flush=True)
        try:
            await _forever()
        finally:
            await runner.cleanup()

    uvloop.run(serve())
    return 0


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()  # until SIGTERM ends the process


if __name__ == "__main__":
    sys.exit(main())
