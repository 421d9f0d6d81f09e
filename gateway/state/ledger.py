"""The usage ledger: one row per answered call, committed in groups before the replies are released.

``CommitGroup`` is a group commit. Every call the pipeline answers in one batch wakes up in the same
pass of the event loop; each records its row and awaits the group's write, which is scheduled with
``call_soon`` behind those wake-ups, so a batch's rows go out in one write. While a write is in flight
the next group gathers (it grows with the load), and a reply is returned only once its row is written.

``SqliteLedger`` is the embedded store (no Redis): SQLite in WAL mode, written on one thread of its
own so the event loop never waits on the disk. The same class holds the journal Redis's outage writes
to (``journal`` table): batches there are replayed, by their ids, once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import sqlite3
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from railcore.errors import RailgateError

log = logging.getLogger("railgate.state")

NANOS = 1_000_000_000  # spend is counted in billionths of the price's unit: integers add up exactly


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One answered call, as billed: ``spend_nanos`` is price_per_1k x rows / 1000, in 1e-9 units."""

    tenant: str
    model: str
    backend: str
    rows: int
    spend_nanos: int
    request_id: str
    at: float  # wall clock, seconds

    @property
    def day(self) -> int:
        return int(self.at // 86_400)

    def values(self) -> tuple[str, str, str, int, int, str, float]:
        """Its fields in order (``dataclasses.astuple`` deep-copies: several times slower, per row)."""
        return (self.tenant, self.model, self.backend, self.rows, self.spend_nanos, self.request_id, self.at)


def spend_nanos(price_per_1k: float, rows: int) -> int:
    return round(price_per_1k * rows * NANOS / 1000)


@dataclass(slots=True)
class Totals:
    """A tenant's billed counts: all time, and the rows answered on ``day`` (UTC)."""

    requests: int = 0
    inferences: int = 0
    spend_nanos: int = 0
    today: int = 0


def totals_of(rows: list[UsageRow]) -> dict[str, Totals]:
    """The rows summed per tenant (``today`` counts every row: the caller keeps them to one day)."""
    sums: dict[str, Totals] = {}
    for row in rows:
        t = sums.get(row.tenant)
        if t is None:
            t = sums[row.tenant] = Totals()
        t.requests += 1
        t.inferences += row.rows
        t.spend_nanos += row.spend_nanos
        t.today += row.rows
    return sums


Write = Callable[[str, list[UsageRow]], Coroutine[Any, Any, None]]


def when_written(done: asyncio.Future[None], then: Callable[[], None]) -> None:
    """Run ``then`` once ``done`` succeeds (a row's local counts follow its write, even if its caller left)."""

    def written(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            then()

    done.add_done_callback(written)


class CommitGroup:
    """Rows recorded together are written together (one ``write(batch_id, rows)``) before any returns.

    Up to ``concurrency`` groups are written at once (each reply waits for its own group's write only);
    past that, the next group gathers until a write ends."""

    def __init__(self, write: Write, process_id: str, concurrency: int = 1) -> None:
        self._write = write
        self._process_id = process_id
        self._concurrency = concurrency
        self._seq = 0
        self._rows: list[UsageRow] = []
        self._next: asyncio.Future[None] | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self.writes = 0  # groups written (tests and the bench read it)

    def record(self, row: UsageRow) -> asyncio.Future[None]:
        """Queue ``row``; the future is done once its group is written (shield it: it is shared)."""
        self._rows.append(row)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if not self._scheduled and len(self._writing) < self._concurrency:
            # Behind the wake-ups already queued in this pass: the rest of a batch joins the group.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return self._next

    def _flush(self) -> None:
        self._scheduled = False
        if len(self._writing) >= self._concurrency or self._next is None:
            return
        rows, done = self._rows, self._next
        self._rows, self._next = [], None
        self._seq += 1
        batch_id = f"{self._process_id}-{self._seq}"
        task = asyncio.get_running_loop().create_task(self._write(batch_id, rows), name="ledger-commit")
        self._writing.add(task)
        task.add_done_callback(lambda t: self._written(t, done))

    def _written(self, task: asyncio.Task[None], done: asyncio.Future[None]) -> None:
        self._writing.discard(task)
        self.writes += 1
        if not done.done():
            if task.cancelled():
                done.set_exception(RuntimeError("the ledger write was cancelled"))
            elif task.exception() is not None:
                done.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                done.set_result(None)
        if self._next is not None:
            self._flush()

    async def close(self) -> None:
        """Wait for the groups being written and write what is queued."""
        for _ in range(3):
            if self._writing:
                await asyncio.gather(*self._writing, return_exceptions=True)
            if self._next is not None:
                self._flush()
            if not self._writing and self._next is None:
                return


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS usage_rows (
    batch_id TEXT NOT NULL, seq INTEGER NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
    backend TEXT NOT NULL, rows INTEGER NOT NULL, spend_nanos INTEGER NOT NULL, request_id TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (batch_id, seq));
CREATE TABLE IF NOT EXISTS totals (
    tenant TEXT PRIMARY KEY, requests INTEGER NOT NULL, inferences INTEGER NOT NULL, spend_nanos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily (
    tenant TEXT NOT NULL, day INTEGER NOT NULL, inferences INTEGER NOT NULL, PRIMARY KEY (tenant, day));
CREATE TABLE IF NOT EXISTS journal (batch_id TEXT PRIMARY KEY, rows TEXT NOT NULL);
"""


class LedgerBusy(RailgateError):
    """Another process holds this ledger (one gateway process per data directory and name): start-up stops."""


class SqliteLedger:
    """SQLite in WAL mode on one thread; ``path`` None is an in-memory database (a journal only)."""

    # A process holds its ledger alone; ``shared_store.SharedStore`` (processes of one host together) shares it.
    shared = False

    def __init__(self, path: Path | None, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._db: sqlite3.Connection | None = None
        self._lock: Any = None

    # -- on the ledger's thread -----------------------------------------------------------------

    def _open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 (held open: the flock lives with it)
            try:
                fcntl.flock(lock, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                how = "a gateway process of its own" if self.shared else "another gateway process"
                raise LedgerBusy(f"{self.path} is in use by {how}") from None
            self._lock = lock
        # The busy timeout: processes sharing the file wait for each other's (short) transactions.
        db = sqlite3.connect(
            str(self.path) if self.path is not None else ":memory:", check_same_thread=False, timeout=30.0
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(_SCHEMA)
        self._db = db

    def _commit(self, batch_id: str, rows: list[UsageRow]) -> bool:
        db = self._db
        assert db is not None
        with db:
            if db.execute("INSERT OR IGNORE INTO batches VALUES (?)", (batch_id,)).rowcount == 0:
                return False  # written before (a replay): nothing is counted twice
            db.executemany(
                "INSERT INTO usage_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(batch_id, seq, *row.values()) for seq, row in enumerate(rows)],
            )
            for tenant, t in totals_of(rows).items():
                db.execute(
                    "INSERT INTO totals VALUES (?, ?, ?, ?) ON CONFLICT(tenant) DO UPDATE SET "
                    "requests = requests + excluded.requests, inferences = inferences + excluded.inferences, "
                    "spend_nanos = spend_nanos + excluded.spend_nanos",
                    (tenant, t.requests, t.inferences, t.spend_nanos),
                )
            for (tenant, day), n in _daily(rows).items():
                db.execute(
                    "INSERT INTO daily VALUES (?, ?, ?) ON CONFLICT(tenant, day) DO UPDATE SET "
                    "inferences = inferences + excluded.inferences",
                    (tenant, day, n),
                )
        return True

    def _totals(self, day: int) -> dict[str, Totals]:
        db = self._db
        assert db is not None
        found = {
            tenant: Totals(requests, inferences, spend)
            for tenant, requests, inferences, spend in db.execute("SELECT * FROM totals")
        }
        for tenant, n in db.execute("SELECT tenant, inferences FROM daily WHERE day = ?", (day,)):
            found.setdefault(tenant, Totals()).today = n
        return found

    def _journal_put(self, batch_id: str, rows: list[UsageRow]) -> None:
        db = self._db
        assert db is not None
        with db:
            db.execute(
                "INSERT OR IGNORE INTO journal VALUES (?, ?)", (batch_id, json.dumps([r.values() for r in rows]))
            )

    def _journal(self, limit: int) -> list[tuple[str, list[UsageRow]]]:
        db = self._db
        assert db is not None
        found = db.execute("SELECT batch_id, rows FROM journal ORDER BY rowid LIMIT ?", (limit,)).fetchall()
        return [(batch_id, [UsageRow(*r) for r in json.loads(rows)]) for batch_id, rows in found]

    def _journal_done(self, batch_ids: list[str]) -> None:
        db = self._db
        assert db is not None
        with db:
            db.executemany("DELETE FROM journal WHERE batch_id = ?", [(b,) for b in batch_ids])

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- from the event loop --------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    async def commit(self, batch_id: str, rows: list[UsageRow]) -> bool:
        """Write a batch's rows and add them to the totals; False (and nothing written) if it was before."""
        return bool(await self._run(self._commit, batch_id, rows))

    async def totals(self, day: int) -> dict[str, Totals]:
        return dict(await self._run(self._totals, day))

    async def journal_put(self, batch_id: str, rows: list[UsageRow]) -> None:
        await self._run(self._journal_put, batch_id, rows)

    async def journal(self, limit: int = 256) -> list[tuple[str, list[UsageRow]]]:
        return list(await self._run(self._journal, limit))

    async def journal_done(self, batch_ids: list[str]) -> None:
        await self._run(self._journal_done, batch_ids)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=False)


JOURNAL_SLOTS = 64


async def open_journal(data_dir: Path | None, synchronous: str) -> SqliteLedger:
    """The outage journal of a Redis-backed process: the first free ``journal-N.sqlite3`` in ``data_dir``
    (one per live process; a restarted one takes over, and replays, what a dead one left), or memory."""
    if data_dir is None:
        journal = SqliteLedger(None)
        await journal.open()
        return journal
    for slot in range(JOURNAL_SLOTS):
        journal = SqliteLedger(data_dir / f"journal-{slot}.sqlite3", synchronous)
        try:
            await journal.open()
            return journal
        except LedgerBusy:
            await journal.close()
    raise LedgerBusy(f"{data_dir}: all {JOURNAL_SLOTS} journal files are in use by other gateway processes")


def _daily(rows: list[UsageRow]) -> dict[tuple[str, int], int]:
    days: dict[tuple[str, int], int] = {}
    for row in rows:
        days[row.tenant, row.day] = days.get((row.tenant, row.day), 0) + row.rows
    return days


def read_rows(path: Path) -> list[UsageRow]:
    """Every row of a ledger file (for tests, the bench and an operator's export); blocking."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [UsageRow(*r) for r in db.execute("SELECT tenant, model, backend, rows, spend_nanos, request_id, at "
                                                  "FROM usage_rows ORDER BY batch_id, seq")]  # fmt: skip
