"""The fleet's store for the processes of one host without Redis (``--workers N``): the SQLite ledger.

The same leases as on Redis (``fleet.FleetState``), as short ``BEGIN IMMEDIATE`` transactions in the
ledger file under ``state.data_dir``, on each process's ledger thread: a bucket per tenant refilled on
the host's monotonic clock (one clock for every process of a host), the rows of each day's quota
leased, the batches committed with their rows, and a heartbeat per process. Nothing here is reachable
or not: a disk error is an error (the call is answered 503), never an outage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.state.ledger import SqliteLedger, Totals

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (tenant TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quota (
    tenant TEXT NOT NULL, day INTEGER NOT NULL, leased INTEGER NOT NULL, PRIMARY KEY (tenant, day));
CREATE TABLE IF NOT EXISTS members (member TEXT PRIMARY KEY, at REAL NOT NULL);
"""


class SharedStore(SqliteLedger):
    """Leases, commits, heartbeats and totals in ``ledger.sqlite3``, shared by this host's processes."""

    kind = "sqlite"
    shared = True
    down: tuple[type[BaseException], ...] = ()  # a local file is never "unreachable"
    commit_concurrency = 1  # one thread writes the file: a second group in flight would only queue there

    def __init__(self, path: Path, synchronous: str = "normal", monotonic: Callable[[], float] = time.monotonic):
        super().__init__(path, synchronous)
        self.where = f"the ledger {path}"
        self.monotonic = monotonic

    def _open(self) -> None:
        super()._open()
        assert self._db is not None
        self._db.executescript(_SCHEMA)

    def _immediately(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(db)`` in one write transaction (taken at once: the busy timeout queues the others)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.rollback()
            raise
        db.commit()
        return result

    def _lease_tokens(self, tenant: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        def lease(db: Any) -> tuple[int, float]:
            now = self.monotonic()
            found = db.execute("SELECT tokens, at FROM buckets WHERE tenant = ?", (tenant,)).fetchone()
            tokens, at = (burst, now) if found is None else found
            if at > now + 1.0:  # the host rebooted (its monotonic clock restarted): start the clock again
                at = now
            if now > at:
                tokens, at = min(burst, tokens + (now - at) * rate), now
            granted = max(0, min(want, math.floor(tokens)))
            tokens -= granted
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (tenant, tokens, at))
            return granted, ((1 - tokens) / rate if not granted else 0.0)

        return self._immediately(lease)  # type: ignore[no-any-return]

    def _return_tokens(self, tenant: str, burst: float, tokens: int) -> None:
        self._immediately(
            lambda db: db.execute(
                "UPDATE buckets SET tokens = min(?, tokens + ?) WHERE tenant = ?", (burst, tokens, tenant)
            )
        )

    def _lease_quota(self, tenant: str, day: int, quota: int, want: int) -> int:
        def lease(db: Any) -> int:
            found = db.execute("SELECT leased FROM quota WHERE tenant = ? AND day = ?", (tenant, day)).fetchone()
            used = found[0] if found else 0
            granted = max(0, min(want, quota - used))
            db.execute("INSERT OR REPLACE INTO quota VALUES (?, ?, ?)", (tenant, day, used + granted))
            return granted

        return self._immediately(lease)  # type: ignore[no-any-return]

    def _add_quota(self, day: int, rows: dict[str, int]) -> None:
        def add(db: Any) -> None:
            for tenant, n in rows.items():
                found = db.execute("SELECT leased FROM quota WHERE tenant = ? AND day = ?", (tenant, day)).fetchone()
                leased = max(0, (found[0] if found else 0) + n)
                db.execute("INSERT OR REPLACE INTO quota VALUES (?, ?, ?)", (tenant, day, leased))

        self._immediately(add)

    def _heartbeat(self, member: str, window_s: float) -> int:
        def beat(db: Any) -> int:
            now = self.monotonic()
            db.execute("INSERT OR REPLACE INTO members VALUES (?, ?)", (member, now))
            db.execute("DELETE FROM members WHERE at < ? OR at > ?", (now - window_s, now + 1.0))
            return int(db.execute("SELECT count(*) FROM members").fetchone()[0])

        return self._immediately(beat)  # type: ignore[no-any-return]

    def _leave(self, member: str) -> None:
        self._immediately(lambda db: db.execute("DELETE FROM members WHERE member = ?", (member,)))

    # -- the Store protocol, from the event loop --------------------------------------------------

    async def lease_tokens(self, tenant: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        return tuple(await self._run(self._lease_tokens, tenant, rate, burst, want))  # type: ignore[return-value]

    async def return_tokens(self, tenant: str, burst: float, tokens: int) -> None:
        await self._run(self._return_tokens, tenant, burst, tokens)

    async def lease_quota(self, tenant: str, day: int, quota: int, want: int) -> int:
        return int(await self._run(self._lease_quota, tenant, day, quota, want))

    async def add_quota(self, day: int, rows: dict[str, int]) -> None:
        await self._run(self._add_quota, day, rows)

    async def heartbeat(self, member: str, window_s: float) -> int:
        return int(await self._run(self._heartbeat, member, window_s))

    async def leave(self, member: str) -> None:
        await self._run(self._leave, member)

    async def fleet_totals(self, tenants: list[str], day: int) -> dict[str, Totals]:
        found = await self.totals(day)
        return {name: found.get(name, Totals()) for name in tenants}
