"""What the HTTP hub client puts on the wire, against a fake hub (an aiohttp server on loopback that
records each request and answers a fixed, valid binary-extension reply)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from aiohttp import web

from gateway.backends.triton import TritonHttpBackend
from gateway.config import HubSpec
from railcore.protocol.codec import HEADER_LENGTH


async def _recording_hub() -> tuple[web.AppRunner, str, list[web.Request], list[bytes]]:
    seen: list[web.Request] = []
    bodies: list[bytes] = []
    out = np.arange(10, dtype=np.float32).reshape(1, 10)

    async def infer(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        head = json.dumps(
            {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 10], "parameters": {"binary_data_size": 40}}]}
        ).encode()
        return web.Response(body=head + out.tobytes(), headers={HEADER_LENGTH: str(len(head))})

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", seen, bodies


async def test_the_hub_is_not_asked_to_compress_its_replies_and_gets_the_tensor_bytes() -> None:
    runner, url, seen, bodies = await _recording_hub()
    backend = TritonHttpBackend(HubSpec("near", url))
    await backend.start()
    try:
        x = np.arange(64, dtype=np.float32).reshape(1, 64)
        deadline = asyncio.get_running_loop().time() + 5
        for version in ("", "2", ""):  # the cached URLs are per model and version
            outputs = await backend.infer("digits", version, {"pixels": x}, ["y"], deadline)
            assert outputs["y"].tolist() == [list(range(10))]
    finally:
        await backend.close()
        await runner.cleanup()
    assert [r.path for r in seen] == [
        "/v2/models/digits/infer",
        "/v2/models/digits/versions/2/infer",
        "/v2/models/digits/infer",
    ]
    assert all("Accept-Encoding" not in r.headers for r in seen), "offered gzip, Triton compresses every reply"
    head_length = int(seen[0].headers[HEADER_LENGTH])
    header = json.loads(bodies[0][:head_length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 256
    assert bodies[0][head_length:] == x.tobytes()
