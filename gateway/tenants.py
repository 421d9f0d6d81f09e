"""Tenants: API keys (salted hashes, constant-time compare), rate limits, daily quotas, usage.

Pure apart from the clocks it is given: the wall clock for the UTC day a quota counts, the monotonic
one for rate limits (a wall-clock step must neither refill nor drain a bucket). The inference service
(service.py) calls ``authenticate``, ``check_model``, ``admit``, then ``record`` for an answered call or
``release`` for a failed one; the access middleware (fronts/access.py) calls ``authenticate_any``. The
pipeline never sees a key.

A key is ``rg_`` + 32 random bytes (urlsafe base64). The config stores only
``sha256$<salt hex>$<digest hex>`` of it: a leaked config file does not leak keys. Keys carry 256
bits of entropy, so one salted SHA-256 is enough (a slow KDF guards low-entropy passwords, not these).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import TenantSpec
from gateway.state.ledger import NANOS, Totals
from railcore.errors import Forbidden, QuotaExceeded, RateLimited, Unauthorized


def new_key() -> str:
    return "rg_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def hash_key(key: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + key.encode()).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def key_matches(key: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    candidate = hashlib.sha256(salt + key.encode()).hexdigest()
    return hmac.compare_digest(candidate, digest)


def quota_exceeded(tenant: Tenant, now: float) -> QuotaExceeded:
    """The 429 for a tenant over its daily quota at wall-clock ``now``: Retry-After is UTC midnight."""
    retry = int((int(now // 86_400) + 1) * 86_400 - now) + 1
    return QuotaExceeded(
        f"tenant {tenant.name!r} used its daily quota of {tenant.spec.daily_quota} inferences",
        headers={"Retry-After": str(retry)},
    )


def rate_limited(tenant: Tenant, wait_s: float) -> RateLimited:
    """The 429 for a tenant over its rate, to retry after ``wait_s``."""
    return RateLimited(
        f"tenant {tenant.name!r} is over its rate of {tenant.spec.rate_per_s:g} requests/s",
        headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
    )


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full. ``now`` is a monotonic clock's."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0 on success, else the seconds until they would be there."""
        if self.at is not None:
            # Never negative: a clock that went back refills nothing (and never empties a bucket either).
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else float("inf")


@dataclass(slots=True)
class Usage:
    """A tenant's counts. ``inferences_today`` holds the rows answered today plus those admitted and not
    yet answered (reserved, so concurrent calls cannot overrun the quota); a failed call releases its rows."""

    day: int = -1
    inferences_today: int = 0
    requests: int = 0  # answered
    inferences: int = 0
    spend: float = 0.0


@dataclass(slots=True)
class Tenant:
    spec: TenantSpec
    bucket: TokenBucket
    usage: Usage = field(default_factory=Usage)

    @property
    def name(self) -> str:
        return self.spec.name


class Tenants:
    """The tenant table. With no tenants configured, every request is anonymous and allowed."""

    def __init__(
        self,
        specs: tuple[TenantSpec, ...],
        admin_keys: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenants = {s.name: Tenant(s, TokenBucket(s.rate_per_s, s.burst or s.rate_per_s)) for s in specs}
        self.admin_keys = admin_keys
        self.clock = clock  # wall clock: which UTC day a quota counts
        self.monotonic = monotonic  # rate limits
        self._verified: OrderedDict[bytes, str] = OrderedDict()  # sha256(key) -> tenant, for speed

    @property
    def enabled(self) -> bool:
        return bool(self.tenants)

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_keys) or self.enabled

    def _bearer(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        return authorization[len("Bearer ") :].strip()

    def authenticate(self, authorization: str | None) -> Tenant:
        key = self._bearer(authorization)
        fingerprint = hashlib.sha256(key.encode()).digest()
        name = self._verified.get(fingerprint)
        if name is None:
            name = next((t.name for t in self.tenants.values() if any(key_matches(key, h) for h in t.spec.keys)), None)
            if name is None:
                raise Unauthorized("invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            self._verified[fingerprint] = name
            if len(self._verified) > 10_000:
                self._verified.popitem(last=False)
        return self.tenants[name]

    def is_admin(self, authorization: str | None) -> bool:
        """Whether ``authorization`` carries an admin key (Unauthorized when it carries no key at all)."""
        key = self._bearer(authorization)
        return any(key_matches(key, h) for h in self.admin_keys)

    def authenticate_admin(self, authorization: str | None) -> None:
        if not self.is_admin(authorization):
            raise Forbidden("this endpoint needs an admin key")

    def authenticate_any(self, authorization: str | None) -> Tenant | None:
        """The tenant a key names, or None for an admin key (Unauthorized for neither)."""
        return None if self.is_admin(authorization) else self.authenticate(authorization)

    def check_model(self, tenant: Tenant, model: str) -> None:
        if tenant.spec.models and model not in tenant.spec.models:
            allowed = ", ".join(tenant.spec.models)
            raise Forbidden(f"tenant {tenant.name!r} may not use model {model!r}; allowed: {allowed}")

    def admit(self, tenant: Tenant, model: str, rows: int) -> None:
        """Check the tenant's model list, rate limit and daily quota for one request of ``rows``."""
        self.check_model(tenant, model)
        spec = tenant.spec
        now = self.clock()
        day = int(now // 86_400)
        usage = tenant.usage
        if usage.day != day:
            usage.day, usage.inferences_today = day, 0
        if spec.daily_quota and usage.inferences_today + rows > spec.daily_quota:
            raise quota_exceeded(tenant, now)
        if spec.rate_per_s:
            wait = tenant.bucket.take(self.monotonic())
            if wait > 0:
                raise rate_limited(tenant, wait)
        usage.inferences_today += rows  # reserved; ``release`` gives it back if nothing is answered

    def release(self, tenant: Tenant, rows: int) -> None:
        """Give back the rows ``admit`` reserved for a call that was not answered (a failure, a cancel)."""
        usage = tenant.usage
        if usage.day == int(self.clock() // 86_400):  # a reservation from yesterday went with its day
            usage.inferences_today = max(0, usage.inferences_today - rows)

    def record(self, tenant: Tenant, rows: int, price_per_1k: float) -> None:
        """Bill an answered call (its rows stay charged to today's quota)."""
        tenant.usage.requests += 1
        tenant.usage.inferences += rows
        tenant.usage.spend += price_per_1k * rows / 1000

    def resume(self, totals: dict[str, Totals], day: int) -> None:
        """Start from what the ledger billed before (a restart): all-time counts and ``day``'s quota use."""
        for name, t in totals.items():
            tenant = self.tenants.get(name)
            if tenant is not None:
                u = tenant.usage
                u.requests, u.inferences, u.spend = t.requests, t.inferences, t.spend_nanos / NANOS
                u.day, u.inferences_today = day, t.today

    def usage(self, only: str | None = None) -> dict[str, dict[str, float]]:
        return {
            t.name: {
                "requests": t.usage.requests,
                "inferences": t.usage.inferences,
                "inferences_today": t.usage.inferences_today,
                "daily_quota": t.spec.daily_quota,
                "spend": round(t.usage.spend, 6),
            }
            for t in self.tenants.values()
            if only is None or t.name == only
        }
