"""Raw HTTP/1.1 over a socket, for the tests of the lean infer paths (railcore/leanhttp.py): what a client
sends is exactly the bytes written, and a reply is read as it comes."""

from __future__ import annotations

import asyncio


async def until(check, timeout_s: float = 5.0) -> bool:
    """Wait for ``check()`` (polled, bounded by the timeout); whether it came true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)  # polling a condition, bounded by the deadline
    return True


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One reply (1xx interim replies skipped): status, headers (lower-case names), body."""
    while True:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if status >= 200:
            break
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    else:
        body = b""
    return status, headers, body


async def exchange(where: str | int, data: bytes, replies: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    if isinstance(where, int):
        reader, writer = await asyncio.open_connection("127.0.0.1", where)
    else:
        reader, writer = await asyncio.open_unix_connection(where)
    try:
        writer.write(data)
        return [await read_reply(reader) for _ in range(replies)]
    finally:
        writer.close()
