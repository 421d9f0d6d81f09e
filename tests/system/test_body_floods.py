"""Body floods: many large JSON bodies at once keep the gateway's memory bounded, and each one is answered.

A memory bound, not a speed assertion: the gateway's peak RSS (``VmHWM``) over the whole flood.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess

CLIENTS = 32
ROWS = 140_000  # x 64 values of "1.0," : a 36 MB JSON body
PEAK_RSS_MB = 500


def _flood_body() -> bytes:
    row = ",".join(["1.0"] * 64)
    data = ",".join([row] * ROWS)
    return f'{{"inputs":[{{"name":"pixels","datatype":"FP32","shape":[{ROWS},64],"data":[{data}]}}]}}'.encode()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM line")


async def _chunks(body: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _flood(url: str, body: bytes, chunked: bool) -> list[int | str]:
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:

        async def one() -> int | str:
            try:
                data = _chunks(body) if chunked else body
                async with session.post(f"{url}/v2/models/digits/infer", data=data, headers=headers) as reply:
                    await reply.read()
                    return reply.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return f"no answer: {exc!r}"

        return await asyncio.gather(*(one() for _ in range(CLIENTS)))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_32_concurrent_36_mb_json_bodies_keep_peak_rss_under_500_mb(tmp_path: Path, chunked: bool):
    body = _flood_body()
    assert 35e6 < len(body) < 37e6
    gateway = GatewayProcess(tmp_path, {"local": {"enabled": True}}).start()
    try:
        statuses = asyncio.run(_flood(gateway.url, body, chunked))
        peak = _peak_rss_mb(gateway.pid)
    finally:
        gateway.stop()
    print(
        f"{'chunked' if chunked else 'content-length'}: peak RSS {peak:.0f} MB, statuses {sorted(set(map(str, statuses)))}"
    )
    unanswered = [s for s in statuses if s not in (400, 413, 429, 503)]
    summary = f"peak RSS {peak:.0f} MB; {len(unanswered)} of {CLIENTS} not answered 400/413/429/503: {unanswered[:3]}"
    assert peak < PEAK_RSS_MB and not unanswered, summary
