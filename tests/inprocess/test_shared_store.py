"""Fleet state without Redis: this host's processes share the SQLite ledger's leases (``--workers N``).

Each ``FleetState`` over a ``SharedStore`` here stands for one worker process (its own connection,
thread, leases and process id); they meet only in the ledger file, as workers do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import State
from gateway.metrics import Metrics
from gateway.state.fleet import FleetState
from gateway.state.ledger import LedgerBusy, SqliteLedger, read_rows
from gateway.state.shared_store import SharedStore
from gateway.tenants import Tenants
from tests.inprocess.test_fleet_state import fleet, spec, until_refused


def worker(path: Path, specs, **state) -> FleetState:
    return FleetState(Tenants(specs), State(host_shared=True, **state), Metrics(), None, store=SharedStore(path))


async def test_workers_admit_one_burst_between_them(tmp_path: Path):
    specs = (spec(rate_per_s=0.001, burst=40),)
    path = tmp_path / "ledger.sqlite3"
    async with fleet(worker(path, specs), worker(path, specs)) as (a, b):
        admitted = await until_refused([a, b])
        assert a.live == 2 or b.live == 2
    assert sum(admitted) == 40 and min(admitted) > 0


async def test_workers_hold_one_daily_quota(tmp_path: Path):
    specs = (spec(daily_quota=50),)
    path = tmp_path / "ledger.sqlite3"
    async with fleet(worker(path, specs, quota_lease_rows=8), worker(path, specs, quota_lease_rows=8)) as (a, b):
        admitted = await until_refused([a, b], rows=3)
    assert 50 - 2 * 3 <= 3 * sum(admitted) <= 50


async def test_workers_bill_to_one_ledger_and_both_report_the_fleet(tmp_path: Path):
    specs = (spec(),)
    path = tmp_path / "ledger.sqlite3"
    async with fleet(worker(path, specs), worker(path, specs)) as (a, b):
        await a.bill(a.tenants.tenants["acme"], "digits", "local", 2, 0.02, "a1")
        await b.bill(b.tenants.tenants["acme"], "digits", "local", 3, 0.02, "b1")
        usage_a, usage_b = await a.usage(), await b.usage()
    assert usage_a == usage_b and usage_a["acme"]["requests"] == 2 and usage_a["acme"]["inferences"] == 5
    assert sorted(r.request_id for r in read_rows(path)) == ["a1", "b1"]


async def test_a_lone_process_and_workers_never_share_one_ledger(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    alone = SqliteLedger(path)
    await alone.open()
    shared = SharedStore(path)
    with pytest.raises(LedgerBusy, match="in use by a gateway process of its own"):
        await shared.open()
    await shared.close()
    await alone.close()
