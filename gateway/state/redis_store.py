"""The fleet's store in Redis: every limit and count the fleet shares, as atomic scripts (``scripts.py``).

All Redis I/O of ``fleet.FleetState`` is here; ``DOWN`` is what an unreachable Redis raises.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.state import scripts
from gateway.state.ledger import Totals, UsageRow, totals_of

# What "Redis is down" looks like to redis-py (a restart's loading phase is a ConnectionError too).
DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
_TTL_S = 3 * 86_400  # quota and today's counts outlive their day by this


def redacted(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else parts.scheme + "://"


class RedisStore:
    """Leases, commits, heartbeats and totals on one Redis (``state.redis_url``)."""

    kind = "redis"
    down = DOWN
    commit_concurrency = 2  # groups written at once: a group does not wait for the write before it

    def __init__(self, url: str, timeout_s: float) -> None:
        self.where = f"Redis at {redacted(url)}"
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # an outage is handled by the caller, not by waiting inside redis-py
            decode_responses=True,
        )
        self._lease_tokens = self.redis.register_script(scripts.LEASE_TOKENS)
        self._return_tokens = self.redis.register_script(scripts.RETURN_TOKENS)
        self._lease_quota = self.redis.register_script(scripts.LEASE_QUOTA)
        self._commit = self.redis.register_script(scripts.COMMIT)
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)
        self._idle: list[AbstractConnection] = []  # commit connections, one per commit in flight

    async def open(self) -> None:
        pass  # connections open on first use (and again after an outage)

    @staticmethod
    def _bucket(tenant: str) -> str:
        return f"{scripts.PREFIX}bucket:{tenant}"

    @staticmethod
    def _quota(tenant: str, day: int) -> str:
        return f"{scripts.PREFIX}quota:{tenant}:{day}"

    async def lease_tokens(self, tenant: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        """Up to ``want`` tokens from the tenant's bucket: (granted, seconds until one is there if none)."""
        ttl = max(60, int(2 * burst / rate) + 1)
        granted, wait = await self._lease_tokens(keys=[self._bucket(tenant)], args=[rate, burst, want, ttl])
        return int(granted), float(wait)

    async def return_tokens(self, tenant: str, burst: float, tokens: int) -> None:
        await self._return_tokens(keys=[self._bucket(tenant)], args=[burst, tokens])

    async def lease_quota(self, tenant: str, day: int, quota: int, want: int) -> int:
        """Up to ``want`` rows of ``day``'s quota."""
        granted, _ = await self._lease_quota(keys=[self._quota(tenant, day)], args=[quota, want, _TTL_S])
        return int(granted)

    async def add_quota(self, day: int, rows: dict[str, int]) -> None:
        """Count ``rows`` more (or, negative, fewer) against each tenant's quota of ``day``, in one round trip."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for tenant, n in rows.items():
                pipe.incrby(self._quota(tenant, day), n)
            await pipe.execute()

    async def heartbeat(self, member: str, window_s: float) -> int:
        """Beat for ``member``; the members that beat within ``window_s``."""
        return int(await self._heartbeat(keys=[scripts.PREFIX + "members"], args=[member, window_s]))

    async def leave(self, member: str) -> None:
        await self.redis.zrem(scripts.PREFIX + "members", member)

    async def commit(self, batch_id: str, rows: list[UsageRow]) -> bool:
        """Add a batch's rows to the totals, today's counts and the ledger stream; False if seen before."""
        sums = totals_of(rows)
        args: list[Any] = [scripts.PREFIX, batch_id, len(sums)]
        for tenant, t in sums.items():
            args += [tenant, t.requests, t.inferences, t.spend_nanos]
        args.append(json.dumps([r.values() for r in rows], separators=(",", ":")))
        day = rows[0].day if rows else 0
        keys = [f"{scripts.PREFIX}batch:{batch_id}", scripts.PREFIX + "ledger", f"{scripts.PREFIX}today:{day}"]
        return bool(await self._on_commit_connection(keys, args))

    async def _on_commit_connection(self, keys: list[str], args: list[Any]) -> Any:
        """The commit script on a connection of its own (one per commit in flight): the pool's checkout and
        the script wrapper (a tenth of a millisecond here) are skipped."""
        conn = self._idle.pop() if self._idle else self.redis.connection_pool.make_connection()
        try:
            if not conn.is_connected:
                await conn.connect()
            try:
                command = conn.pack_command("EVALSHA", self._commit.sha, len(keys), *keys, *args)
                await conn.send_packed_command(command, check_health=False)
                reply = await conn.read_response()
            except NoScriptError:  # a restarted Redis forgot the script: send it whole, once
                command = conn.pack_command("EVAL", scripts.COMMIT, len(keys), *keys, *args)
                await conn.send_packed_command(command, check_health=False)
                reply = await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return reply

    async def fleet_totals(self, tenants: list[str], day: int) -> dict[str, Totals]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in tenants:
                pipe.hgetall(f"{scripts.PREFIX}usage:{name}")
            pipe.hgetall(f"{scripts.PREFIX}today:{day}")
            replies = await pipe.execute()
        today = replies[-1]
        return {
            name: Totals(
                int(r.get("requests", 0)), int(r.get("inferences", 0)), int(r.get("spend_nanos", 0)),
                int(today.get(name, 0)),
            )
            for name, r in zip(tenants, replies, strict=False)
        }  # fmt: skip

    async def close(self) -> None:
        for conn in self._idle:
            await conn.disconnect()
        await self.redis.aclose()


def ledger_rows(redis_url: str) -> list[UsageRow]:
    """Every row of the fleet's ledger stream (for tests, the bench and an operator's export); blocking."""
    import redis as syncredis

    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found: list[UsageRow] = []
        last = "-"
        for _ in range(1_000_000):  # bounded: 1,000 entries a page
            page: list[Any] = list(client.xrange(scripts.PREFIX + "ledger", min=last, max="+", count=1000) or [])
            if last != "-":
                page = page[1:]  # the page starts at the last entry of the one before
            if not page:
                return found
            for _entry_id, fields in page:
                found += [UsageRow(*row) for row in json.loads(fields["rows"])]
            last = str(page[-1][0])
        return found
    finally:
        client.close()
