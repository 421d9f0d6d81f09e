"""SIGTERM under load: a request that connected is answered (200, or 503 with Retry-After while the
gateway drains), never reset with the accept backlog when the listener closes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from tests.conftest import GatewayProcess

CLIENTS = 16
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}).encode()


def _request(port: int) -> bytes:
    head = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _one(port: int) -> tuple[int, dict[str, str]] | str | None:
    """One request on its own connection: its status and headers, a string if it connected and got no
    answer, None if it never connected (the listener was closed: not a request)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(_request(port))
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(headers.get("Content-Length", "0")))
        return int(lines[0].split()[1]), headers
    except (OSError, asyncio.IncompleteReadError) as exc:
        return f"connected, never answered: {exc!r}"
    finally:
        writer.close()


async def _load_then_sigterm(gateway: GatewayProcess) -> list[tuple[int, dict[str, str]] | str]:
    answers: list[tuple[int, dict[str, str]] | str] = []
    until = time.monotonic() + 60  # bound: the gateway exits well before

    async def client() -> None:
        while time.monotonic() < until:
            answer = await _one(gateway.port)
            if answer is None:
                return
            answers.append(answer)

    clients = [asyncio.ensure_future(client()) for _ in range(CLIENTS)]
    while len(answers) < 200 and time.monotonic() < until:  # noqa: ASYNC110 (a count, bounded in time)
        await asyncio.sleep(0.01)  # load is flowing first
    process = gateway.service.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 60)
    assert code == 0
    await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
    return answers


def test_sigterm_answers_every_connected_request_none_is_reset(tmp_path: Path):
    gateway = GatewayProcess(tmp_path, {"local": {"enabled": True}, "drain_s": 0.5}).start()
    try:
        answers = asyncio.run(_load_then_sigterm(gateway))
    finally:
        gateway.stop()
    unanswered = [a for a in answers if isinstance(a, str)]
    statuses = [a[0] for a in answers if not isinstance(a, str)]
    refused = [a for a in answers if not isinstance(a, str) and a[0] == 503]
    assert not unanswered, (
        f"{len(unanswered)} of {len(answers)} connected requests were never answered: {unanswered[:2]}"
    )
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert all(h.get("Retry-After") and h.get("Connection", "").lower() == "close" for _, h in refused)
    assert statuses.count(200) >= 200
