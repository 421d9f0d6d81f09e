"""Fleet state in Redis: tenant rate limits, daily quotas, usage and spend shared by every process.

(The I/O is a ``Store``: ``redis_store.RedisStore``, or ``shared_store.SharedStore`` for one host's
workers without Redis, which is never "down". What follows says Redis for either.)

No Redis round trip per request. Each process *leases* from Redis, atomically (``scripts.py``): a
slice of a tenant's rate (``state.lease_s`` seconds' worth of tokens from the fleet's one bucket) and
a slice of its daily quota (``state.quota_lease_rows``). Admission spends what the process holds; a
background lease refills it when half is gone, so a request waits on Redis only when its process ran
dry, and a refused one (the fleet's bucket empty) is refused locally until the bucket's refill time.
Tokens a process leased and did not spend are lost to the fleet (at most one slice a process) or given
back at shutdown: the fleet never admits more than its limit, and admits less by at most that.

Usage is committed per batch (``ledger.CommitGroup``): one script call adds a group's rows to the
tenants' totals, today's counts and the ``ledger`` stream, keyed by the batch id so that a replay
counts nothing twice. ``/v1/usage`` reads the fleet's totals.

When Redis cannot be reached, ``state.on_outage`` says what admission does: ``local`` serves on local
limits (the fleet's rate, burst and remaining quota divided among the processes alive at the last
heartbeat) and journals each batch's usage to local SQLite, replayed once Redis answers again;
``refuse`` answers tenant calls 503 until then (their usage, if already answered, is journalled too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.config import OnOutage, State
from gateway.metrics import Metrics
from gateway.state.ledger import (
    NANOS,
    CommitGroup,
    SqliteLedger,
    Totals,
    UsageRow,
    open_journal,
    spend_nanos,
    when_written,
)
from gateway.tenants import Tenant, Tenants, TokenBucket, quota_exceeded, rate_limited
from railcore.errors import StateUnavailable

log = logging.getLogger("railgate.state")


class Store(Protocol):
    """Where the fleet's limits and counts live: Redis (``redis_store``) or one host's SQLite (``shared_store``)."""

    kind: str
    where: str  # for messages: "Redis at redis://host:port"
    down: tuple[type[BaseException], ...]  # what it raises while unreachable (an outage)
    commit_concurrency: int  # groups it may write at once

    async def open(self) -> None: ...
    async def lease_tokens(self, tenant: str, rate: float, burst: float, want: int) -> tuple[int, float]: ...
    async def return_tokens(self, tenant: str, burst: float, tokens: int) -> None: ...
    async def lease_quota(self, tenant: str, day: int, quota: int, want: int) -> int: ...
    async def add_quota(self, day: int, rows: dict[str, int]) -> None: ...
    async def heartbeat(self, member: str, window_s: float) -> int: ...
    async def leave(self, member: str) -> None: ...
    async def commit(self, batch_id: str, rows: list[UsageRow]) -> bool: ...
    async def fleet_totals(self, tenants: list[str], day: int) -> dict[str, Totals]: ...
    async def close(self) -> None: ...


_OUTAGE_RETRY_S = 0.2  # while down, Redis is tried this often


def _cancelled() -> bool:
    """Whether the running task is being cancelled. redis-py can end a call cancelled mid-read with a
    ConnectionError instead of CancelledError: a store error caught while this is true is the cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(slots=True)
class Holding:
    """What this process holds of one tenant's fleet limits, and its local limits during an outage."""

    tokens: float = 0.0  # leased request tokens
    empty_until: float = 0.0  # monotonic: the fleet's bucket was empty; refused locally until then
    day: int = -1  # the UTC day the quota rows belong to
    quota_rows: int = 0  # leased rows of that day's quota
    quota_empty_until: float = 0.0  # monotonic: the fleet's quota was used up (checked again after)
    outage_bucket: TokenBucket | None = None  # the tenant's rate / live processes, while Redis is down
    outage_rows: int = 0  # rows of quota granted locally for the outage (added to Redis on recovery)


class FleetState:
    """Limits, quotas and usage shared through Redis (``state.redis_url``); see the module docstring."""

    shared = True

    def __init__(
        self,
        tenants: Tenants,
        config: State,
        metrics: Metrics,
        journal_dir: Path | None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        store: Store | None = None,
    ) -> None:
        self.tenants = tenants
        self.config = config
        self.metrics = metrics
        self.journal_dir = journal_dir
        self.journal = SqliteLedger(None)  # in memory until ``start`` opens a free journal file in journal_dir
        self.clock = clock
        self.monotonic = monotonic
        if store is None:
            from gateway.state.redis_store import RedisStore  # redis-py loads only for Redis

            assert config.redis_url is not None
            store = RedisStore(config.redis_url, config.timeout_ms / 1000)
        self.store = store
        self.where = store.where
        self.down_errors = store.down  # what an unreachable store raises: an outage, not a failure
        self.process_id = secrets.token_hex(8)
        self.commits = CommitGroup(self._write, self.process_id, store.commit_concurrency)
        self.holdings = {name: Holding() for name in tenants.tenants}
        self.up = False  # until Redis first answers: a gateway that starts in an outage is in one
        self.live = 1  # processes that beat at the last heartbeat
        self.fleet: dict[str, Totals] = {}  # the fleet's totals as last read
        self.journalled = 0  # rows written to the local journal in outages (the bench reads these)
        self.replayed = 0  # ... and rows replayed from it to Redis
        self.pending_since: float | None = None  # monotonic time the oldest row still in the journal went in
        metrics.ledger_lag.set_function(self.ledger_lag_s)
        self._leases: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.journal = await open_journal(self.journal_dir, self.config.sqlite_synchronous)
        if await self.journal.journal(limit=1):  # a previous run's outage rows, not yet replayed
            self.pending_since = self.monotonic()
        await self.store.open()
        await self._recover()
        if not self.up:
            log.warning("event=state_outage store=%r on_outage=%s at=start", self.where, self.config.on_outage)
            self._down_locally()
        self._spawn(self._beat_forever(), "state-heartbeat")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closing = True  # the heartbeat loop ends even if a cancel reaches it as an outage (_cancelled)
        await self.commits.close()
        for task in [*self._tasks, *self._leases.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._leases.values(), return_exceptions=True)
        if self.up:
            with contextlib.suppress(*self.down_errors):
                await self._give_back()
        await self.store.close()
        await self.journal.close()

    async def _give_back(self) -> None:
        """Return unspent leases (tokens to the bucket, quota rows to today's count) and leave the fleet."""
        day = int(self.clock() // 86_400)
        unspent: dict[str, int] = {}
        for name, h in self.holdings.items():
            spec = self.tenants.tenants[name].spec
            if spec.rate_per_s and h.tokens >= 1:
                await self.store.return_tokens(name, self._burst(spec), int(h.tokens))
                h.tokens = 0
            if spec.daily_quota and h.quota_rows and h.day == day:
                unspent[name], h.quota_rows = -h.quota_rows, 0
        if unspent:
            await self.store.add_quota(day, unspent)
        await self.store.leave(self.process_id)

    @staticmethod
    def _burst(spec: Any) -> float:
        return float(spec.burst or spec.rate_per_s)

    # -- admission (the hot path: no Redis call unless this process ran dry) ---------------------

    def admit(self, tenant: Tenant, model: str, rows: int) -> Awaitable[None] | None:
        """Check the tenant's model, rate and quota for a call of ``rows``: None when admitted from what
        this process holds (or raised), else an awaitable that leases first (and raises if refused)."""
        self.tenants.check_model(tenant, model)
        if not self.up:
            self._admit_outage(tenant, rows)
            return None
        spec = tenant.spec
        if not spec.rate_per_s and not spec.daily_quota:
            return None
        h = self._holding(tenant)
        if (not spec.daily_quota or h.quota_rows >= rows) and (not spec.rate_per_s or h.tokens >= 1):
            self._take(tenant, h, rows)
            return None
        return self._admit_leasing(tenant, rows)

    def _holding(self, tenant: Tenant) -> Holding:
        h = self.holdings[tenant.name]
        day = int(self.clock() // 86_400)
        if h.day != day:  # yesterday's quota rows went with their day
            h.day, h.quota_rows, h.quota_empty_until = day, 0, 0.0
        return h

    def _take(self, tenant: Tenant, h: Holding, rows: int) -> None:
        spec = tenant.spec
        if spec.daily_quota:
            h.quota_rows -= rows
            if h.quota_rows < self._quota_slice(spec, rows) / 2 and self.monotonic() >= h.quota_empty_until:
                self._lease(tenant, "quota", rows)  # ahead of need, in the background
        if spec.rate_per_s:
            h.tokens -= 1
            if h.tokens < self._token_slice(spec) / 2 and self.monotonic() >= h.empty_until:
                self._lease(tenant, "tokens", 1)

    async def _admit_leasing(self, tenant: Tenant, rows: int) -> None:
        spec = tenant.spec
        for _ in range(3):  # others may spend a fresh lease first; bounded
            h = self._holding(tenant)
            if spec.daily_quota and h.quota_rows < rows:
                if self.monotonic() < h.quota_empty_until:
                    raise quota_exceeded(tenant, self.clock())
                await self._lease(tenant, "quota", rows)
                if not self.up:
                    return self._admit_outage(tenant, rows)
                if h.quota_rows < rows:
                    raise quota_exceeded(tenant, self.clock())
            if spec.rate_per_s and h.tokens < 1:
                wait = h.empty_until - self.monotonic()
                if wait > 0:
                    raise rate_limited(tenant, wait)
                await self._lease(tenant, "tokens", 1)
                if not self.up:
                    return self._admit_outage(tenant, rows)
                if h.tokens < 1:
                    raise rate_limited(tenant, max(h.empty_until - self.monotonic(), 1 / spec.rate_per_s))
            if (not spec.daily_quota or h.quota_rows >= rows) and (not spec.rate_per_s or h.tokens >= 1):
                return self._take(tenant, h, rows)
        raise rate_limited(tenant, 1 / spec.rate_per_s if spec.rate_per_s else 1.0)

    def _token_slice(self, spec: Any) -> int:
        return max(1, min(math.ceil(spec.rate_per_s * self.config.lease_s), int(self._burst(spec))))

    def _quota_slice(self, spec: Any, rows: int) -> int:
        return max(rows, min(self.config.quota_lease_rows, spec.daily_quota))

    def _lease(self, tenant: Tenant, kind: str, need: int) -> asyncio.Task[None]:
        """The lease of ``kind`` in flight for ``tenant`` (one at a time), started if there is none."""
        key = (tenant.name, kind)
        task = self._leases.get(key)
        if task is None:
            lease = self._lease_quota_now(tenant, need) if kind == "quota" else self._lease_tokens_now(tenant)
            task = asyncio.get_running_loop().create_task(lease, name=f"lease-{kind}")
            self._leases[key] = task
            task.add_done_callback(lambda _: self._leases.pop(key, None))
        return task

    async def _lease_tokens_now(self, tenant: Tenant) -> None:
        spec = tenant.spec
        try:
            granted, wait = await self.store.lease_tokens(
                tenant.name, spec.rate_per_s, self._burst(spec), self._token_slice(spec)
            )
        except self.down_errors as exc:
            self._down(exc)
            return
        h = self.holdings[tenant.name]
        h.tokens += granted
        if not granted:
            h.empty_until = self.monotonic() + wait

    async def _lease_quota_now(self, tenant: Tenant, need: int) -> None:
        spec = tenant.spec
        day = int(self.clock() // 86_400)
        try:
            granted = await self.store.lease_quota(tenant.name, day, spec.daily_quota, self._quota_slice(spec, need))
        except self.down_errors as exc:
            self._down(exc)
            return
        h = self._holding(tenant)
        if h.day == day:
            h.quota_rows += granted
            if h.quota_rows < need:
                # Used up, unless another process gives rows back (a release, a shutdown): look again later.
                h.quota_empty_until = self.monotonic() + self.config.heartbeat_s

    def release(self, tenant: Tenant, rows: int) -> None:
        """Give back the rows ``admit`` took for a call that was not answered."""
        if tenant.spec.daily_quota:
            h = self.holdings[tenant.name]
            if h.day == int(self.clock() // 86_400):
                h.quota_rows += rows

    # -- outage ---------------------------------------------------------------------------------

    def _admit_outage(self, tenant: Tenant, rows: int) -> None:
        if self.config.on_outage == OnOutage.REFUSE:
            raise StateUnavailable(
                f"the fleet's shared state ({self.where}) is unreachable, and state.on_outage is "
                "refuse: tenant calls are refused until it is back",
                headers={"Retry-After": "1"},
            )
        spec = tenant.spec
        h = self._holding(tenant)
        if spec.daily_quota and h.quota_rows < rows:
            raise quota_exceeded(tenant, self.clock())
        if spec.rate_per_s and h.tokens < 1:
            if h.outage_bucket is None:  # Redis went down between two steps of a recovery
                h.outage_bucket = TokenBucket(
                    spec.rate_per_s / max(1, self.live), self._burst(spec) / max(1, self.live)
                )
            wait = h.outage_bucket.take(self.monotonic())
            if wait > 0:
                raise rate_limited(tenant, wait)
        elif spec.rate_per_s:
            h.tokens -= 1  # a lease taken before the outage is still the process's to spend
        if spec.daily_quota:
            h.quota_rows -= rows

    def _down(self, exc: BaseException) -> None:
        if _cancelled():
            raise asyncio.CancelledError from exc
        if self.up:
            self.up = False
            log.warning(
                "event=state_outage store=%r on_outage=%s live=%d error=%s",
                self.where,
                self.config.on_outage,
                self.live,
                type(exc).__name__,
            )
            self._down_locally()

    def _down_locally(self) -> None:
        """Local limits for the outage: the fleet's rate, burst and remaining quota over the live processes."""
        self.metrics.state_up.set(0)
        n = max(1, self.live)
        day = int(self.clock() // 86_400)
        for name, tenant in self.tenants.tenants.items():
            spec, h = tenant.spec, self._holding(tenant)
            if spec.rate_per_s:
                h.outage_bucket = TokenBucket(spec.rate_per_s / n, max(1.0, self._burst(spec) / n))
            if spec.daily_quota:
                seen = self.fleet.get(name, Totals()).today if day == h.day else 0
                h.outage_rows = max(0, spec.daily_quota - seen) // n
                h.quota_rows += h.outage_rows

    async def _recover(self) -> None:
        """Try Redis; once it answers, replay the journal and go back to leases."""
        try:
            self.live = await self.store.heartbeat(self.process_id, 3 * self.config.heartbeat_s)
            await self._replay()
            day = int(self.clock() // 86_400)
            granted = {n: h.outage_rows for n, h in self.holdings.items() if h.outage_rows and h.day == day}
            if granted:  # the rows granted locally count against today's quota: one round trip, then cleared
                await self.store.add_quota(day, granted)
            for h in self.holdings.values():
                h.outage_rows, h.outage_bucket = 0, None
            self.up = True
            await self._replay()  # what was journalled while the first pass ran
            await self._read_fleet()
        except self.down_errors:
            if _cancelled():
                raise asyncio.CancelledError from None
            self.up = False
            return
        self.metrics.state_up.set(1)
        log.info("event=state_up store=%r live=%d replayed_rows=%d", self.where, self.live, self.replayed)

    async def _replay(self) -> None:
        for _ in range(10_000):  # bounded: 256 batches a pass
            batches = await self.journal.journal()
            if not batches:
                self.pending_since = None
                return
            for batch_id, rows in batches:
                if await self._commit_rows(batch_id, rows):
                    self.replayed += len(rows)
                    self.metrics.state_replayed.inc(len(rows))
            await self.journal.journal_done([batch_id for batch_id, _ in batches])

    async def _beat_forever(self) -> None:
        while not self._closing:
            if self.up:
                await asyncio.sleep(self.config.heartbeat_s)
                try:
                    self.live = await self.store.heartbeat(self.process_id, 3 * self.config.heartbeat_s)
                    await self._read_fleet()
                except self.down_errors as exc:
                    self._down(exc)
            else:
                await asyncio.sleep(min(_OUTAGE_RETRY_S, self.config.heartbeat_s))
                await self._recover()

    # -- billing --------------------------------------------------------------------------------

    async def bill(self, tenant: Tenant, model: str, backend: str, rows: int, price: float, request_id: str) -> None:
        """Commit the call's usage row (with its group) before the caller replies."""
        row = UsageRow(tenant.name, model, backend, rows, spend_nanos(price, rows), request_id[:128], self.clock())
        done = self.commits.record(row)
        when_written(done, lambda: self.tenants.record(tenant, rows, price))
        await asyncio.shield(done)

    async def _write(self, batch_id: str, rows: list[UsageRow]) -> None:
        if self.up:
            try:
                await self._commit_rows(batch_id, rows)
                return
            except self.down_errors as exc:
                self._down(exc)
            except sqlite3.Error as exc:  # the host's shared ledger (shared_store): the calls go unanswered
                raise StateUnavailable(
                    f"{self.where} could not be written: {exc}; the answer is withheld", headers={"Retry-After": "1"}
                ) from None
        # Redis may have run the script and lost only its reply: the replay's batch id finds it there.
        try:
            await self.journal.journal_put(batch_id, rows)
        except sqlite3.Error as exc:  # the calls go unanswered (503) rather than unbilled
            raise StateUnavailable(
                f"{self.where} is down and the journal {self.journal.path or '(memory)'} could not be "
                f"written: {exc}; the answer is withheld",
                headers={"Retry-After": "1"},
            ) from None
        self.journalled += len(rows)
        self.metrics.state_journalled.inc(len(rows))
        if self.pending_since is None:
            self.pending_since = self.monotonic()

    def ledger_lag_s(self) -> float:
        """Seconds the oldest journalled (answered, not yet in Redis) usage row has waited; 0 when none."""
        since = self.pending_since
        return 0.0 if since is None else max(0.0, self.monotonic() - since)

    async def _commit_rows(self, batch_id: str, rows: list[UsageRow]) -> bool:
        return await self.store.commit(batch_id, rows)

    # -- usage ----------------------------------------------------------------------------------

    async def _read_fleet(self) -> None:
        self.fleet = await self.store.fleet_totals(list(self.tenants.tenants), int(self.clock() // 86_400))
        for name, t in self.fleet.items():
            self.metrics.tenant_fleet_inferences.labels(name).set(t.inferences)
            self.metrics.tenant_fleet_spend.labels(name).set(t.spend_nanos / NANOS)

    async def usage(self, only: str | None = None) -> dict[str, dict[str, float]]:
        """The fleet's usage per tenant (the last figures read while Redis is down)."""
        if self.up:
            with contextlib.suppress(*self.down_errors):
                await self._read_fleet()
        return {
            name: {
                "requests": t.requests,
                "inferences": t.inferences,
                "inferences_today": t.today,
                "daily_quota": self.tenants.tenants[name].spec.daily_quota,
                "spend": round(t.spend_nanos / NANOS, 6),
            }
            for name in self.tenants.tenants
            for t in [self.fleet.get(name, Totals())]
            if only is None or name == only
        }
