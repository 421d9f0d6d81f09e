"""A burst of clients while the gateway is too busy to accept: each one waits in the listener's accept
queue (``listen.backlog``) and is answered, none is reset.

The gateway is paused (SIGSTOP: a fault scripted on a real process, as a long GC pause or a starved core
would) while the clients connect and send a request with a large body. A queue too short for the burst
drops handshakes, and under SYN cookies Linux resets a client that believes it is connected: its first
segment is dropped at the full queue and the next ones fail the cookie check. `make chaos`'s 1,000 slow
clients ran against such a queue (168 lost in one run, all ConnectionResetError): aiohttp's ``SockSite``
listens on the socket again, with its own default backlog of 128 unless it is given the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from tests.conftest import GatewayProcess

CLIENTS = 400  # more than asyncio's and aiohttp's default backlog (128), within the gateway's (1024)
BURST = 256 * 1024  # several TCP segments of body: the second one is what a cookie check resets
CONNECT_S = 3.0  # a dropped SYN is retried after 1 s: a client still unconnected by then was not queued
REPLY_S = 60.0


def _head(port: int) -> bytes:
    # Over limits.max_body_bytes (64 MiB): answered 413 at once, with the body still arriving.
    return (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()


async def _connect_and_send(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_S)
    except (OSError, TimeoutError) as exc:
        return f"not connected: {exc!r}"
    writer.write(_head(port) + bytes(BURST))
    return reader, writer


async def _reply_status(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int | str:
    reader, writer = connection
    try:
        async with asyncio.timeout(REPLY_S):
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            await reader.readexactly(int(headers.get("Content-Length", "0")))
            return int(lines[0].split()[1])
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return f"connected, never answered: {exc!r}"
    finally:
        writer.close()


async def _burst_while_paused(gateway: GatewayProcess) -> tuple[list[str], list[int | str]]:
    os.kill(gateway.pid, signal.SIGSTOP)
    try:
        # Every client has connected (or given up) and sent its request before the gateway runs again.
        tried = await asyncio.gather(*(_connect_and_send(gateway.port) for _ in range(CLIENTS)))
    finally:
        os.kill(gateway.pid, signal.SIGCONT)
    unconnected = [t for t in tried if isinstance(t, str)]
    replies = await asyncio.gather(*(_reply_status(t) for t in tried if not isinstance(t, str)))
    return unconnected, replies


def test_a_burst_of_clients_while_the_gateway_is_paused_is_queued_and_answered_none_reset(tmp_path: Path):
    gateway = GatewayProcess(tmp_path, {"local": {"enabled": True}}).start()
    try:
        unconnected, replies = asyncio.run(_burst_while_paused(gateway))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.pid, signal.SIGCONT)
        gateway.stop()
    unanswered = [r for r in replies if r != 413]
    assert not unanswered, f"{len(unanswered)} of {len(replies)} connected clients not answered 413: {unanswered[:3]}"
    assert not unconnected, f"{len(unconnected)} of {CLIENTS} never queued: {unconnected[:2]}"
