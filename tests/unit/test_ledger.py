"""The usage ledger: group commit (one write per batch, before the replies) and the embedded SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.state.ledger import CommitGroup, LedgerBusy, SqliteLedger, UsageRow, open_journal, read_rows

DAY = 20_000


def row(tenant: str = "acme", rows: int = 2, request_id: str = "r", at: float = DAY * 86_400.0 + 5) -> UsageRow:
    return UsageRow(tenant, "digits", "west-1", rows, 40_000 * rows, request_id, at)


async def test_rows_recorded_in_one_loop_pass_are_one_write_and_none_returns_before_it():
    writes: list[tuple[str, int]] = []
    release = asyncio.Event()

    async def write(batch_id: str, rows: list[UsageRow]) -> None:
        writes.append((batch_id, len(rows)))
        await release.wait()

    group = CommitGroup(write, "p1")
    waiting = [asyncio.ensure_future(asyncio.shield(group.record(row(request_id=str(i))))) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == [("p1-1", 5)]
    assert not any(w.done() for w in waiting)  # no reply is released before its group is written
    later = asyncio.ensure_future(asyncio.shield(group.record(row(request_id="late"))))
    release.set()
    await asyncio.gather(*waiting, later)
    assert writes == [("p1-1", 5), ("p1-2", 1)]  # what came during the write is the next group


async def test_with_two_writers_a_group_does_not_wait_for_the_one_before_it():
    writes: list[str] = []
    release = {"p1-1": asyncio.Event(), "p1-2": asyncio.Event()}

    async def write(batch_id: str, rows: list[UsageRow]) -> None:
        writes.append(batch_id)
        await release[batch_id].wait()

    group = CommitGroup(write, "p1", concurrency=2)
    first = asyncio.ensure_future(asyncio.shield(group.record(row(request_id="a"))))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(asyncio.shield(group.record(row(request_id="b"))))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == ["p1-1", "p1-2"]  # the second group is written while the first still is
    release["p1-2"].set()
    await second
    assert not first.done()  # each reply waits for its own group's write, and only for it
    release["p1-1"].set()
    await first


async def test_a_failed_write_fails_every_row_of_its_group():
    async def write(batch_id: str, rows: list[UsageRow]) -> None:
        raise OSError("disk full")

    group = CommitGroup(write, "p1")
    done = [group.record(row()), group.record(row())]
    for future in done:
        with pytest.raises(OSError, match="disk full"):
            await asyncio.shield(future)


async def test_a_batch_committed_twice_is_counted_once(tmp_path: Path):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    await ledger.open()
    rows = [row(rows=2), row(rows=3, tenant="west")]
    assert await ledger.commit("p1-1", rows)
    assert not await ledger.commit("p1-1", rows)  # a replay of the same batch
    totals = await ledger.totals(DAY)
    assert (totals["acme"].requests, totals["acme"].inferences, totals["acme"].today) == (1, 2, 2)
    assert totals["west"].spend_nanos == 120_000
    await ledger.close()
    assert len(read_rows(tmp_path / "ledger.sqlite3")) == 2


async def test_a_reopened_ledger_resumes_its_totals_and_is_in_wal_mode(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    first = SqliteLedger(path)
    await first.open()
    await first.commit("p1-1", [row(rows=4)])
    await first.close()
    second = SqliteLedger(path)
    await second.open()
    await second.commit("p2-1", [row(rows=1), row(rows=1, at=(DAY + 1) * 86_400.0)])
    totals = await second.totals(DAY)
    assert (totals["acme"].requests, totals["acme"].inferences, totals["acme"].today) == (3, 6, 5)
    await second.close()
    assert (tmp_path / "ledger.sqlite3-wal").exists() or path.read_bytes()[18:20] == b"\x02\x02"


async def test_one_ledger_file_is_one_process_s(tmp_path: Path):
    first = SqliteLedger(tmp_path / "ledger.sqlite3")
    await first.open()
    second = SqliteLedger(tmp_path / "ledger.sqlite3")
    with pytest.raises(LedgerBusy, match="in use by another gateway process"):
        await second.open()
    await second.close()
    await first.close()


async def test_journals_take_a_free_slot_each_and_hand_back_what_they_hold(tmp_path: Path):
    a = await open_journal(tmp_path, "normal")
    b = await open_journal(tmp_path, "normal")
    assert a.path != b.path
    await a.journal_put("p1-1", [row(request_id="x")])
    await a.journal_put("p1-1", [row(request_id="x")])  # journalled twice: kept once
    await a.close()
    c = await open_journal(tmp_path, "normal")  # a restarted process takes over the free slot
    assert c.path == a.path
    [(batch_id, rows)] = await c.journal()
    assert batch_id == "p1-1" and rows == [row(request_id="x")]
    await c.journal_done([batch_id])
    assert await c.journal() == []
    await b.close()
    await c.close()


class FailingLedger(SqliteLedger):
    """A fake: the real SQLite ledger whose commit fails the way a full disk does."""

    async def commit(self, batch_id: str, rows: list[UsageRow]) -> bool:
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_ledger_that_cannot_write_withholds_the_answer_with_a_503_and_bills_nothing(tmp_path: Path):
    from gateway.config import TenantSpec
    from gateway.state.local import LocalState
    from gateway.tenants import Tenants, hash_key
    from railcore.errors import StateUnavailable

    tenants = Tenants((TenantSpec("acme", keys=(hash_key("rg_acme"),)),))
    state = LocalState(tenants, FailingLedger(tmp_path / "ledger.sqlite3"))
    await state.start()
    with pytest.raises(StateUnavailable, match=r"usage ledger .* could not be written: database or disk is full"):
        await state.bill(tenants.tenants["acme"], "digits", "local", 1, 0.02, "r1")
    assert (await state.usage())["acme"]["requests"] == 0
    await state.close()
