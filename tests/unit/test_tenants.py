"""Tenants as a pure table: keys, token buckets, quotas, under a fake clock."""

from __future__ import annotations

import pytest

from gateway.config import TenantSpec
from gateway.tenants import Tenants, TokenBucket, hash_key, key_matches, new_key
from railcore.errors import Forbidden, Overloaded, Unauthorized


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, **spec) -> tuple[Tenants, str]:
    key = new_key()
    tenants = Tenants((TenantSpec("acme", keys=(hash_key(key),), **spec),), clock=clock, monotonic=clock)
    return tenants, key


def test_keys_are_stored_salted_and_compared_exactly() -> None:
    key = new_key()
    stored = hash_key(key)
    assert key not in stored and key_matches(key, stored)
    assert not key_matches(key + "x", stored) and not key_matches(key, "md5$00$11")
    assert hash_key(key) != stored, "each hash has its own salt"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer rg_not-a-key"])
def test_missing_or_bad_keys_are_401(header: str | None) -> None:
    tenants, _ = table(Clock())
    with pytest.raises(Unauthorized):
        tenants.authenticate(header)


def test_a_good_key_names_its_tenant() -> None:
    tenants, key = table(Clock())
    assert tenants.authenticate(f"Bearer {key}").name == "acme"
    assert tenants.authenticate(f"Bearer {key}").name == "acme"  # the cached path


def test_models_outside_the_tenants_list_are_403() -> None:
    tenants, key = table(Clock(), models=("digits",))
    tenant = tenants.authenticate(f"Bearer {key}")
    tenants.admit(tenant, "digits", 1)
    with pytest.raises(Forbidden, match="may not use model 'vision'"):
        tenants.admit(tenant, "vision", 1)


def test_rate_limit_is_429_with_retry_after_and_refills() -> None:
    clock = Clock()
    tenants, key = table(clock, rate_per_s=2.0, burst=2.0)
    tenant = tenants.authenticate(f"Bearer {key}")
    tenants.admit(tenant, "digits", 1)
    tenants.admit(tenant, "digits", 1)
    with pytest.raises(Overloaded) as refused:
        tenants.admit(tenant, "digits", 1)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    clock.now += 0.5
    tenants.admit(tenant, "digits", 1)


def test_daily_quota_counts_rows_and_resets_at_utc_midnight() -> None:
    clock = Clock(now=86_400 * 100 + 3600)
    tenants, key = table(clock, daily_quota=10)
    tenant = tenants.authenticate(f"Bearer {key}")
    tenants.admit(tenant, "digits", 8)
    with pytest.raises(Overloaded, match="daily quota of 10") as refused:
        tenants.admit(tenant, "digits", 3)
    assert int(refused.value.headers["Retry-After"]) == 86_400 - 3600 + 1
    clock.now += 86_400
    tenants.admit(tenant, "digits", 10)


def test_admin_keys_are_separate_from_tenant_keys() -> None:
    admin = new_key()
    tenants = Tenants((), admin_keys=(hash_key(admin),))
    tenants.authenticate_admin(f"Bearer {admin}")
    with pytest.raises(Forbidden):
        tenants.authenticate_admin(f"Bearer {new_key()}")


def test_token_bucket_never_saves_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) > 0


def test_a_wall_clock_step_back_refills_nothing() -> None:
    """The bucket runs on the monotonic clock: an NTP step (or an operator's date) cannot refill a burst."""
    wall, monotonic = Clock(), Clock(now=50.0)
    key = new_key()
    tenants = Tenants(
        (TenantSpec("acme", keys=(hash_key(key),), rate_per_s=1.0, burst=2.0),), clock=wall, monotonic=monotonic
    )
    tenant = tenants.authenticate(f"Bearer {key}")
    tenants.admit(tenant, "digits", 1)
    tenants.admit(tenant, "digits", 1)
    for step_s in (-3600.0, 7200.0):  # back an hour, then forward two: the bucket sees neither
        wall.now += step_s
        with pytest.raises(Overloaded, match="over its rate"):
            tenants.admit(tenant, "digits", 1)
    monotonic.now += 1.0
    tenants.admit(tenant, "digits", 1)


def test_a_bucket_whose_clock_goes_back_stays_empty() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(100.0) == 0.0 and bucket.take(100.0) == 0.0
    assert bucket.take(90.0) > 0 and bucket.take(90.0) > 0, "a step back refilled the bucket"


def test_a_released_reservation_gives_the_quota_back() -> None:
    tenants, key = table(Clock(now=86_400 * 100 + 3600), daily_quota=2)
    tenant = tenants.authenticate(f"Bearer {key}")
    tenants.admit(tenant, "digits", 2)
    tenants.release(tenant, 2)  # the request failed: nothing was answered, nothing is charged
    tenants.admit(tenant, "digits", 2)
    assert tenants.usage()["acme"]["inferences_today"] == 2
