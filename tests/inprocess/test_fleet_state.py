"""Fleet state on a real redis-server: two processes' worth of ``FleetState`` sharing one tenant's limits.

Each ``FleetState`` here stands for one gateway process (its own leases, journal and process id);
they meet only in Redis, as processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import State, TenantSpec
from gateway.metrics import Metrics
from gateway.state.fleet import FleetState
from gateway.state.redis_store import RedisStore
from gateway.tenants import Tenants, hash_key
from railcore.errors import QuotaExceeded, RateLimited, StateUnavailable


def process(redis_url: str, specs: tuple[TenantSpec, ...], data_dir: Path | None = None, **state) -> FleetState:
    return FleetState(Tenants(specs), State(redis_url=redis_url, **state), Metrics(), data_dir)


def spec(**limits) -> TenantSpec:
    return TenantSpec("acme", keys=(hash_key("rg_acme"),), **limits)


async def admit(state: FleetState, rows: int = 1) -> bool:
    tenant = state.tenants.tenants["acme"]
    try:
        leasing = state.admit(tenant, "digits", rows)
        if leasing is not None:
            await leasing
    except (RateLimited, QuotaExceeded):
        return False
    return True


async def until_refused(states: list[FleetState], rows: int = 1, most: int = 1000) -> list[int]:
    """Admit round-robin until every process is refused; the calls each admitted."""
    admitted = [0] * len(states)
    refused = [False] * len(states)
    for _ in range(most):
        for i, state in enumerate(states):
            if not refused[i]:
                if await admit(state, rows):
                    admitted[i] += 1
                else:
                    refused[i] = True
        if all(refused):
            break
    return admitted


def lag_metric(state: FleetState) -> float:
    """The exported railgate_usage_ledger_lag_seconds, read back through Prometheus's own parser."""
    for family in text_string_to_metric_families(state.metrics.render().decode()):
        if family.name == "railgate_usage_ledger_lag_seconds":
            return family.samples[0].value
    raise AssertionError("railgate_usage_ledger_lag_seconds is not exported")


@contextlib.asynccontextmanager
async def fleet(*states: FleetState):
    for state in states:
        await state.start()
    try:
        yield states
    finally:
        for state in states:
            await state.close()


async def test_two_processes_admit_one_burst_between_them(redis_server):
    specs = (spec(rate_per_s=0.001, burst=40),)  # no refill within the test: the burst is all there is
    async with fleet(process(redis_server.url, specs), process(redis_server.url, specs)) as (a, b):
        admitted = await until_refused([a, b])
    assert sum(admitted) == 40 and min(admitted) > 0


def script_calls(redis_url: str) -> int:
    """EVALSHA and EVAL calls the server has run (its own count: INFO commandstats)."""
    import redis as syncredis

    with contextlib.closing(syncredis.Redis.from_url(redis_url)) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def test_admission_makes_no_redis_call_per_request(redis_server):
    specs = (spec(rate_per_s=1.0, burst=1000),)
    async with fleet(process(redis_server.url, specs, lease_s=50)) as (a,):  # a slice: 50 tokens
        before = script_calls(redis_server.url)
        admitted = [await admit(a) for _ in range(200)]
        calls = script_calls(redis_server.url) - before
    assert all(admitted)
    assert calls <= 200 // 50 + 1  # one lease per slice, not one call per request


async def test_the_daily_quota_holds_across_processes_and_a_release_gives_rows_back(redis_server):
    specs = (spec(daily_quota=50),)
    async with fleet(process(redis_server.url, specs, quota_lease_rows=8),
                     process(redis_server.url, specs, quota_lease_rows=8)) as (a, b):  # fmt: skip
        admitted = await until_refused([a, b], rows=3)
        assert 3 * sum(admitted) <= 50 and 3 * sum(admitted) >= 50 - 2 * 3
        a.release(a.tenants.tenants["acme"], 3)
        assert await admit(a, 3)


async def test_usage_is_the_fleet_s_in_every_process_and_a_replayed_batch_counts_once(redis_server):
    specs = (spec(),)
    async with fleet(process(redis_server.url, specs), process(redis_server.url, specs)) as (a, b):
        tenant_a, tenant_b = a.tenants.tenants["acme"], b.tenants.tenants["acme"]
        await asyncio.gather(*(a.bill(tenant_a, "digits", "west-1", 2, 0.02, f"a{i}") for i in range(5)))
        await b.bill(tenant_b, "digits", "west-1", 3, 0.02, "b0")
        assert a.commits.writes == 1  # five calls answered together: one write
        rows = [r for r in await a.journal.journal()]  # nothing journalled while Redis is up
        assert rows == []
        from gateway.state.ledger import UsageRow

        again = [UsageRow("acme", "digits", "west-1", 3, 60_000, "b0", 1.0)]
        assert not await b._commit_rows(f"{b.process_id}-1", again)  # b's first batch, replayed
        usage_a, usage_b = await a.usage(), await b.usage()
        for state in (a, b):  # the tenant metrics answer for the fleet too
            assert state.metrics.registry.get_sample_value("railgate_tenant_fleet_inferences", {"tenant": "acme"}) == 13
    assert usage_a == usage_b
    assert usage_a["acme"]["requests"] == 6 and usage_a["acme"]["inferences"] == 13
    assert usage_a["acme"]["spend"] == pytest.approx(13 * 0.02 / 1000)


async def test_redis_down_serves_on_a_share_of_the_rate_journals_usage_and_replays_it_once(redis_server, tmp_path):
    specs = (spec(rate_per_s=0.001, burst=40),)
    a = process(redis_server.url, specs, tmp_path / "a", lease_s=0.001)
    b = process(redis_server.url, specs, tmp_path / "b", lease_s=0.001)
    async with fleet(a, b):
        tenant = a.tenants.tenants["acme"]
        assert a.live == 2 or b.live == 2
        a.live = b.live = 2  # both beat: each has half the fleet's burst while Redis is down
        redis_server.stop()
        await a.bill(tenant, "digits", "west-1", 2, 0.02, "during-1")  # Redis is found down here
        assert not a.up
        admitted = 0
        for _ in range(100):
            admitted += await admit(a)
        assert admitted == 20  # 40 / 2 live processes
        await a.bill(tenant, "digits", "west-1", 2, 0.02, "during-2")
        assert a.journalled == 2  # usage rows (calls), one per bill
        assert a.ledger_lag_s() > 0  # answered, not yet in the fleet's ledger
        assert lag_metric(a) > 0
        redis_server.start()
        for _ in range(200):  # the heartbeat task tries again every 0.2 s
            if a.up:
                break
            await asyncio.sleep(0.05)
        assert a.up and a.replayed == 2
        assert a.ledger_lag_s() == 0.0
        assert lag_metric(a) == 0.0
        usage = await a.usage()
    assert usage["acme"]["requests"] == 2 and usage["acme"]["inferences"] == 4


async def test_with_on_outage_refuse_a_tenant_without_limits_is_refused_too(redis_server):
    async with fleet(process(redis_server.url, (spec(),), on_outage="refuse")) as (a,):
        tenant = a.tenants.tenants["acme"]
        redis_server.stop()
        await a.bill(tenant, "digits", "west-1", 1, 0.0, "r1")  # the commit finds Redis down (and journals)
        with pytest.raises(StateUnavailable, match=r"state\.on_outage is refuse"):
            a.admit(tenant, "digits", 1)


async def test_with_on_outage_refuse_redis_down_is_a_503_naming_it(redis_server):
    specs = (spec(rate_per_s=10.0),)
    async with fleet(process(redis_server.url, specs, on_outage="refuse")) as (a,):
        redis_server.stop()
        tenant = a.tenants.tenants["acme"]
        for _ in range(100):  # the lease in hand first; the next lease finds Redis down
            try:
                leasing = a.admit(tenant, "digits", 1)
                if leasing is not None:
                    await leasing
            except StateUnavailable as exc:
                assert exc.status == 503 and "Redis at redis://127.0.0.1" in exc.message
                assert "state.on_outage is refuse" in exc.message
                break
        else:
            pytest.fail("Redis was down and calls were still admitted")


class CancelIntoConnectionError(RedisStore):
    """A real RedisStore whose heartbeat, once started, turns its cancellation into a ConnectionError.

    A named fake for a fault seen on real Redis: redis-py 8.1 sometimes ends a call cancelled mid-read with
    ``ConnectionError("Connection closed by server.")`` rather than CancelledError (about one cancel in a
    hundred, measured on a loopback redis-server), which the heartbeat reads as an outage."""

    def __init__(self, url: str) -> None:
        super().__init__(url, 0.25)
        self.calls = 0
        self.in_flight = asyncio.Event()

    async def heartbeat(self, member: str, window_s: float) -> int:
        self.calls += 1
        if self.calls != 2:  # the second heartbeat only: the first is start()'s
            return await super().heartbeat(member, window_s)
        self.in_flight.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None
        return 1


async def test_close_ends_a_heartbeat_whose_cancellation_redis_py_turned_into_an_outage(redis_server):
    store = CancelIntoConnectionError(redis_server.url)
    state = FleetState(Tenants((spec(),)), State(redis_url=redis_server.url, heartbeat_s=0.01), Metrics(), None,
                       store=store)  # fmt: skip
    await state.start()
    assert state.up
    await asyncio.wait_for(store.in_flight.wait(), 10)
    closing = asyncio.ensure_future(state.close())
    done, _ = await asyncio.wait([closing], timeout=10)  # not wait_for: it would wait on the hang it cancels
    assert done, "close() hung: the heartbeat loop took its cancellation for an outage and went on beating"
    closing.result()
    assert not state._tasks
    assert state.up  # the cancel is not taken for an outage either (nothing journalled, no state_outage)
