"""``make chaos``'s driver (bench.chaos.drive) against a scripted fake gateway on loopback: an answer
is lost when the gateway itself made it after the deadline (its X-Gateway-Ms), and only counted
"read late" when the gateway made it in time and the driver read it late."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import chaos


def fake_gateway(delay_s: float, gateway_ms: str | None, served: asyncio.Event) -> web.Application:
    """Answers an infer 200 after ``delay_s``, saying ``gateway_ms`` as its own time (or nothing);
    sets ``served`` on the first, so the driver's one client stops after it."""

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        served.set()
        await asyncio.sleep(delay_s)  # the scripted slowness, outside (or inside) the "gateway's" time
        headers = {"X-Gateway-Ms": gateway_ms} if gateway_ms is not None else {}
        return web.json_response({"outputs": []}, headers=headers)

    app = web.Application()
    app.router.add_post("/v2/models/digits/infer", infer)
    return app


@pytest.mark.parametrize(
    ("gateway_ms", "lost", "read_late", "ok"),
    [
        ("5.0", 0, 1, 1),  # the gateway made it in 5 ms: the rest of the wait is not the gateway's
        ("300.0", 1, 0, 0),  # the gateway's own time is past the deadline: lost
        (None, 1, 0, 0),  # no gateway time: the driver's clock judges
    ],
)
async def test_a_late_answer_is_lost_only_if_the_gateway_made_it_late(
    gateway_ms: str | None, lost: int, read_late: int, ok: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos, "BUDGET_MS", 100)
    monkeypatch.setattr(chaos, "SLACK_S", 0.05)
    served = asyncio.Event()
    server = TestServer(fake_gateway(0.3, gateway_ms, served), host="127.0.0.1")
    await server.start_server()
    tally = chaos.Tally("scripted")
    try:
        url = str(server.make_url("")).rstrip("/")
        await asyncio.wait_for(chaos.drive(url, tally, concurrency=1, seconds=10, stop=served), timeout=10)
    finally:
        await server.close()
    assert (tally.sent, tally.lost, tally.read_late, tally.ok) == (1, lost, read_late, ok), tally.notes
