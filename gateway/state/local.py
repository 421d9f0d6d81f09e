"""One process's limits (``tenants.Tenants``), billed to the embedded ledger when ``state.data_dir`` is set."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable

from gateway.state.ledger import CommitGroup, SqliteLedger, UsageRow, spend_nanos, when_written
from gateway.tenants import Tenant, Tenants
from railcore.errors import StateUnavailable


class LocalState:
    """Rate limits and quotas in this process's memory; usage in SQLite (``ledger``) or, without one, in
    memory only (lost on restart, as a development gateway's is)."""

    shared = False

    def __init__(self, tenants: Tenants, ledger: SqliteLedger | None, clock: Callable[[], float] = time.time) -> None:
        self.tenants = tenants
        self.ledger = ledger
        self.clock = clock
        self.commits = CommitGroup(self._write, secrets.token_hex(8)) if ledger is not None else None

    async def start(self) -> None:
        if self.ledger is not None:
            await self.ledger.open()
            day = int(self.clock() // 86_400)
            self.tenants.resume(await self.ledger.totals(day), day)

    async def _write(self, batch_id: str, rows: list[UsageRow]) -> None:
        assert self.ledger is not None
        try:
            await self.ledger.commit(batch_id, rows)
        except sqlite3.Error as exc:  # the calls go unanswered (503) rather than unbilled
            raise StateUnavailable(
                f"the usage ledger {self.ledger.path} could not be written: {exc}; the answer is withheld",
                headers={"Retry-After": "1"},
            ) from None

    def admit(self, tenant: Tenant, model: str, rows: int) -> Awaitable[None] | None:
        self.tenants.admit(tenant, model, rows)
        return None

    def release(self, tenant: Tenant, rows: int) -> None:
        self.tenants.release(tenant, rows)

    async def bill(self, tenant: Tenant, model: str, backend: str, rows: int, price: float, request_id: str) -> None:
        """Bill an answered call: written to the ledger (with its group) before the caller replies."""
        if self.commits is None:
            self.tenants.record(tenant, rows, price)
            return
        row = UsageRow(tenant.name, model, backend, rows, spend_nanos(price, rows), request_id[:128], self.clock())
        done = self.commits.record(row)
        when_written(done, lambda: self.tenants.record(tenant, rows, price))
        await asyncio.shield(done)

    async def usage(self, only: str | None = None) -> dict[str, dict[str, float]]:
        return self.tenants.usage(only)

    async def close(self) -> None:
        if self.commits is not None:
            await self.commits.close()
        if self.ledger is not None:
            await self.ledger.close()
