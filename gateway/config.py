"""Typed gateway configuration: one YAML file, validated once at start-up, then passed in.

Validation walks the dataclasses below: an unknown key, a missing required key or a value of the
wrong type is a ``ConfigError`` naming the key by its path (``hubs[1].price_per_1k``). Nothing
else in the gateway reads files or the environment for settings.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.routing.policy import POLICIES
from railcore.settings import ConfigError, build_section, read_yaml
from railcore.signing import BadKey, load_signing_key
from railcore.tls import ClientTLS, ServerTLS, client_pem, server_pem
from railcore.tracing import TracingSettings, check_settings

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_KEY_HASH = re.compile(r"^sha256\$[0-9a-f]{32}\$[0-9a-f]{64}$")


class Priority(enum.StrEnum):
    """A request's admission priority (``X-Priority``): lower priorities are shed first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITIES: tuple[Priority, ...] = tuple(Priority)


OPS_HOST = "127.0.0.1"  # the ops listener's default address: ops routes stay on the host unless told


@dataclass(frozen=True, slots=True)
class OpsListen:
    """The operations listener: /metrics, /status, /dashboard and /admin/* here, not on the public port."""

    port: int  # 0: any free one (with --workers N: each worker its own, port + i)
    host: str = OPS_HOST


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # the KServe v2 gRPC API on this port (0: any free one); absent: off
    tls: ServerTLS | None = None  # HTTPS, and TLS on the gRPC port; with client_ca_file, mutual TLS
    ops: OpsListen | None = None  # absent: the ops routes are served on the public port
    # Connections the kernel queues for the HTTP port before the gateway accepts them: a burst past it is
    # dropped at the handshake, or reset after it under SYN cookies (capped by net.core.somaxconn).
    backlog: int = 1024
    # Infer calls are read by the gateway's own HTTP/1.1 path (gateway/fronts/lean.py), every other request by
    # aiohttp's; false: aiohttp's for every request. Tracing on takes aiohttp's path regardless.
    lean_http: bool = True


@dataclass(frozen=True, slots=True)
class TariffWindow:
    """A time-of-day price: ``from`` and ``to`` as "HH:MM", wrapping midnight when to < from."""

    from_: str = field(metadata={"key": "from"})
    to: str
    price_per_1k: float


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    price_per_1k: float


@dataclass(frozen=True, slots=True)
class HubSpec:
    """A Triton hub on the backbone. Its models and their metadata are read from the hub itself."""

    name: str
    url: str  # http://host:port for protocol http; host:port (or grpc://host:port) for grpc
    region: str = "default"
    price_per_1k: float = 0.0
    model_prices: tuple[ModelPrice, ...] = ()  # per-model prices win over the tariff
    tariff: tuple[TariffWindow, ...] = ()  # time-of-day prices
    carbon_g_per_kwh: float = 0.0
    protocol: str = "http"
    max_connections: int = 64
    max_inflight: int = 8  # concurrent batches this gateway sends to the hub
    metrics_url: str = ""  # Triton's Prometheus endpoint (http://host:8002/metrics), optional
    tls: ClientTLS | None = None  # https:// hubs and secure gRPC channels: pinned CA, client cert, name


@dataclass(frozen=True, slots=True)
class Batching:
    max_batch_size: int = 64  # a cap: the batch never exceeds the backend model's own max_batch_size
    max_queue_delay_ms: float = 2.0
    preferred_batch_sizes: tuple[int, ...] = ()  # empty: take the model's own
    # While fewer batches than this are in flight for a batch key, a request is sent at once: an idle
    # pipeline adds no delay. Past it, arrivals gather for max_queue_delay_ms (or until a batch returns,
    # fills or runs out of slack) and then go, however many are in flight: it is not a cap. 1, as
    # Triton's dynamic batcher with one instance: at 2, a front whose calls arrive one at a time (gRPC)
    # sent nearly every request in a hub call of its own (docs/perf-issue14-grpc.md).
    max_inflight_batches: int = 1
    # A lane (one batch key's queue and task) with nothing queued or in flight for this long is
    # removed: a client can vary its key (X-Allowed-Regions), so lanes must not outlive their traffic.
    idle_lane_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024
    # A JSON body becomes Python objects many times its size before it is an array: it gets a smaller limit.
    max_json_body_bytes: int = 8 * 1024 * 1024
    # Request bodies being read or held at once, all connections together; past it a new body is refused (503).
    max_reading_bytes: int = 256 * 1024 * 1024
    max_inputs: int = 64
    max_elements: int = 16 * 1024 * 1024  # per tensor
    max_bytes_element: int = 1024 * 1024  # one BYTES element
    max_queued_requests: int = 10_000  # per batch key; past it requests are refused with 429
    body_timeout_s: float = 30.0  # a body that has not arrived by then is a 408 (slow clients)
    bytes_must_be_utf8: bool = True  # ONNX string tensors hold text: a non-UTF-8 BYTES element is a 400


@dataclass(frozen=True, slots=True)
class Deadlines:
    default_budget_ms: float = 10_000.0  # for requests that carry no budget
    max_budget_ms: float = 300_000.0


@dataclass(frozen=True, slots=True)
class Local:
    """The gateway's own ONNX Runtime backend over a Triton model repository."""

    enabled: bool = True
    repository: str = "models/repository"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    intra_op_threads: int = 1
    workers: int = 2  # concurrent ONNX Runtime runs (threads off the event loop)
    providers: tuple[str, ...] = ()  # empty: the best the installed onnxruntime offers
    # Where the gateway itself runs, for residency: a call whose allowed regions leave this out
    # never runs on the local backend.
    region: str = "local"
    # A model whose measured run (peak-sensitive EWMA) is at most this long runs on the event loop
    # itself: handing it to a worker thread and back costs more than the run. 0: always a thread.
    inline_max_ms: float = 0.5


@dataclass(frozen=True, slots=True)
class Routing:
    default_policy: str = "nearest"  # nearest | cheapest | balanced | greenest | round_robin | least_loaded
    balance_weight: float = 0.5  # balanced: 1.0 is price only, 0.0 is latency only
    retry_ratio: float = 0.2  # concurrent retries and hedges <= this share of active requests ...
    min_retry_concurrency: int = 3  # ... but at least this many
    hedge: bool = False  # send a copy to the next-best hub when the first is past its predicted p95
    hedge_factor: float = 1.0  # hedge after hedge_factor x the hub's predicted p95
    ewma_decay_s: float = 30.0  # an unsampled latency estimate fades with this time constant
    # A hub serves a request only if this quantile of its recent calls (per model and batch size, the
    # last ``tail_window``), plus ``tail_margin_ms``, fits the remaining budget; else local if it fits.
    # 0: fit on the mean-ish prediction alone.
    tail_quantile: float = 0.99
    tail_window: int = 128
    tail_margin_ms: float = 1.0
    # A hub call for a batch still out when only the local backend's tail (plus the margin) is left of
    # the budget is raced by a local run (where residency allows local); the first answer wins.
    rescue_locally: bool = True
    # ... or sooner: once the call is past this quantile of the hub's own recent calls (measured over
    # at least 1 / (1 - q) of them), where that comes first. 0: only when the budget says so.
    rescue_quantile: float = 0.95


@dataclass(frozen=True, slots=True)
class Health:
    probe_interval_s: float = 2.0
    probe_timeout_s: float = 1.0
    discover_timeout_s: float = 10.0  # reading a hub's models, metadata and configs
    stats_interval_s: float = 5.0  # Triton's statistics (and metrics_url) are read this often
    failures_to_eject: int = 3  # consecutive failed or timed-out batches eject a hub ...
    base_ejection_s: float = 1.0  # ... for this long, doubling with each ejection in a row ...
    max_ejection_s: float = 30.0  # ... up to this
    slow_start_s: float = 5.0  # a returning hub's share of batches ramps up over this
    warmup: bool = True  # send warm-up batches to a newly seen hub before real traffic


@dataclass(frozen=True, slots=True)
class Artifacts:
    """Model files edge devices pull (`railgate edge sync`): GET /v1/models/{m}/artifact, /config.pbtxt, /manifest."""

    repository: str | None = None  # None: local.repository
    exportable: tuple[str, ...] = ()  # models devices may download; none by default
    # Ed25519 private key (PEM or 32 raw bytes) that signs each model's manifest; None: served unsigned
    signing_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A customer: its API keys (salted hashes from `railgate keys new`), what it may use, its limits."""

    name: str
    keys: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # empty: every model
    regions: tuple[str, ...] = ()  # residency; empty: anywhere
    rate_per_s: float = 0.0  # requests per second (token bucket); 0: unlimited
    burst: float = 0.0  # bucket size; 0: one second's worth
    daily_quota: int = 0  # inferences (batch rows) per UTC day; 0: unlimited
    priority: str = "normal"  # default X-Priority: high | normal | low


class Access(enum.StrEnum):
    """Who may call a route family: anyone, a tenant (or an admin), or an admin only.

    ``tenant`` is open while no tenants are configured; ``admin`` is open while neither tenants nor
    admin keys are (a gateway without keys is a development one: everything is open, as before)."""

    OPEN = "open"
    TENANT = "tenant"
    ADMIN = "admin"


ACCESS_LEVELS: tuple[Access, ...] = tuple(Access)


@dataclass(frozen=True, slots=True)
class AccessLevels:
    """The access level of each route family (``access:``), enforced by one middleware (fronts/access.py)."""

    health: str = Access.OPEN  # /v2/health/*: load balancers and orchestrators probe without a key
    metadata: str = Access.TENANT  # /v2, /v2/models/{m}[/config|/ready|/stats], /v2/repository/index
    inference: str = Access.TENANT  # /v2/models/{m}/infer: always a tenant's (the service bills it)
    metrics: str = Access.OPEN  # /metrics: Prometheus scrapes without a key
    status: str = Access.ADMIN  # /status: hub URLs, breakers, queues
    openapi: str = Access.TENANT  # /openapi.json: it names the models served
    usage: str = Access.TENANT  # /v1/usage: a tenant sees its own, an admin everyone's
    artifacts: str = Access.TENANT  # /v1/models/{m}/*: model files, within the tenant's models
    admin: str = Access.ADMIN  # /admin/*
    dashboard: str = Access.OPEN  # /dashboard: a static page; its data comes from /status and /metrics


@dataclass(frozen=True, slots=True)
class Admission:
    """Bounded queues: past these, requests are refused at once (429/503 with Retry-After)."""

    max_active_requests: int = 20_000  # admitted and not yet answered, all models together
    shed_low_at: float = 0.7  # low priority is refused once this share of max_active is in use ...
    shed_normal_at: float = 0.9  # ... normal priority at this share; high only when full
    refuse_predicted_misses: bool = True  # refuse a request whose predicted wait exceeds its budget


class OnOutage(enum.StrEnum):
    """What admission does while Redis (``state.redis_url``) cannot be reached."""

    LOCAL = "local"  # serve on local limits: each live process gets its share of the fleet's rate and quota
    REFUSE = "refuse"  # refuse tenant calls (503) until Redis is back


@dataclass(frozen=True, slots=True)
class State:
    """Where tenant limits, daily quotas and the usage ledger live (``state:``; see gateway/state)."""

    redis_url: str | None = None  # redis://host:port/db: shared by every worker and gateway host
    data_dir: str | None = None  # the on-disk ledger (SQLite, WAL) and Redis's outage journal; None: memory
    on_outage: str = OnOutage.LOCAL
    lease_s: float = 0.05  # a process leases this many seconds of a tenant's rate from Redis at a time
    quota_lease_rows: int = 100  # ... and this many rows of its daily quota (fewer when less is left)
    heartbeat_s: float = 1.0  # live-process count, fleet usage for the metrics, outage recovery checks
    timeout_ms: float = 250.0  # one Redis call; past it Redis counts as down
    sqlite_synchronous: str = "normal"  # normal: survives a crash of the process; full: also a power loss
    # Without Redis: this host's gateway processes share data_dir's ledger and limits (--workers N sets it).
    host_shared: bool = False


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: Listen = field(default_factory=Listen)
    hubs: tuple[HubSpec, ...] = ()
    batching: Batching = field(default_factory=Batching)
    limits: Limits = field(default_factory=Limits)
    deadlines: Deadlines = field(default_factory=Deadlines)
    local: Local = field(default_factory=Local)
    routing: Routing = field(default_factory=Routing)
    health: Health = field(default_factory=Health)
    admission: Admission = field(default_factory=Admission)
    artifacts: Artifacts = field(default_factory=Artifacts)
    tenants: tuple[TenantSpec, ...] = ()
    admin_keys: tuple[str, ...] = ()  # salted hashes; needed for /admin/* once tenants or admin keys exist
    access: AccessLevels = field(default_factory=AccessLevels)
    state: State = field(default_factory=State)
    shutdown_grace_s: float = 30.0  # on SIGTERM: finish accepted requests within this, then exit
    drain_s: float = 1.0  # ... after first serving this long with "Connection: close" on every reply
    tracing: TracingSettings = field(default_factory=TracingSettings)  # OpenTelemetry (railcore/tracing.py)


def load_config(path: Path | None) -> GatewayConfig:
    """Read and validate a YAML config file (None: every default, local backend only)."""
    return GatewayConfig() if path is None else parse_config(read_yaml(path))


def parse_config(raw: Any) -> GatewayConfig:
    config = build_section(GatewayConfig, raw, "")
    _check(config)
    return config


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _check_listen(listen: Listen) -> None:
    if not 1 <= listen.backlog <= 65535:
        raise ConfigError(f"listen.backlog: expected 1..65535, got {listen.backlog}")
    if listen.tls is not None:
        server_pem(listen.tls, "listen.tls")  # every file read and parsed now: start-up stops here, naming it
    if listen.ops is not None:
        ops = listen.ops
        if not 0 <= ops.port <= 65535:
            raise ConfigError(f"listen.ops.port: expected 0..65535, got {ops.port}")
        if ops.port and ops.port == listen.port:
            raise ConfigError(f"listen.ops.port: {ops.port} is listen.port; the ops listener needs a port of its own")
        if ops.port and ops.port == listen.grpc_port:
            raise ConfigError(f"listen.ops.port: {ops.port} is listen.grpc_port; the ops listener needs its own")


def _check(config: GatewayConfig) -> None:
    """Constraints the types alone cannot say."""
    names = set()
    for i, hub in enumerate(config.hubs):
        key = f"hubs[{i}]"
        if hub.name in names:
            raise ConfigError(f"{key}.name: hub {hub.name!r} is listed twice")
        names.add(hub.name)
        if hub.name == "local":
            raise ConfigError(f"{key}.name: 'local' is reserved for the gateway's own backend")
        if hub.protocol not in ("http", "grpc"):
            raise ConfigError(f"{key}.protocol (hub {hub.name}): expected http or grpc, got {hub.protocol!r}")
        parts = urlsplit(hub.url if "://" in hub.url else f"{hub.protocol}://{hub.url}")
        if parts.scheme not in ("http", "https", "grpc") or not parts.hostname or not parts.port:
            raise ConfigError(f"{key}.url (hub {hub.name}): expected http://host:port, got {hub.url!r}")
        if hub.tls is not None:
            if hub.protocol == "http" and parts.scheme != "https":
                raise ConfigError(
                    f"{key}.url (hub {hub.name}): tls is set, so the url must be https://, got {hub.url!r}"
                )
            client_pem(hub.tls, f"{key}.tls")
        _positive(hub.max_inflight, f"{key}.max_inflight (hub {hub.name})")
        _positive(hub.max_connections, f"{key}.max_connections (hub {hub.name})")
        if hub.price_per_1k < 0 or hub.carbon_g_per_kwh < 0:
            raise ConfigError(f"{key} (hub {hub.name}): price_per_1k and carbon_g_per_kwh must be >= 0")
        for j, window in enumerate(hub.tariff):
            for name in ("from_", "to"):
                value = getattr(window, name)
                if not _HHMM.match(value):
                    field_name = name.rstrip("_")
                    raise ConfigError(
                        f'{key}.tariff[{j}].{field_name} (hub {hub.name}): expected "HH:MM", got {value!r}'
                    )
            if window.price_per_1k < 0:
                raise ConfigError(f"{key}.tariff[{j}].price_per_1k (hub {hub.name}): must be >= 0")
        if hub.metrics_url and not urlsplit(hub.metrics_url).hostname:
            raise ConfigError(f"{key}.metrics_url (hub {hub.name}): expected http://host:port/metrics")
    b = config.batching
    _positive(b.max_batch_size, "batching.max_batch_size")
    _positive(b.max_inflight_batches, "batching.max_inflight_batches")
    if b.max_queue_delay_ms < 0:
        raise ConfigError(f"batching.max_queue_delay_ms: must be >= 0, got {b.max_queue_delay_ms}")
    _positive(b.idle_lane_s, "batching.idle_lane_s")
    for i, size in enumerate(b.preferred_batch_sizes):
        _positive(size, f"batching.preferred_batch_sizes[{i}]")
    for name in ("max_body_bytes", "max_json_body_bytes", "max_reading_bytes", "max_inputs", "max_elements",
                 "max_bytes_element", "max_queued_requests", "body_timeout_s"):  # fmt: skip
        _positive(getattr(config.limits, name), f"limits.{name}")
    _positive(config.deadlines.default_budget_ms, "deadlines.default_budget_ms")
    _positive(config.deadlines.max_budget_ms, "deadlines.max_budget_ms")
    _positive(config.local.workers, "local.workers")
    _positive(config.local.intra_op_threads, "local.intra_op_threads")
    if not (config.local.inline_max_ms >= 0 and math.isfinite(config.local.inline_max_ms)):
        raise ConfigError(f"local.inline_max_ms: must be >= 0, got {config.local.inline_max_ms}")
    _positive(config.listen.port + 1, "listen.port")
    _check_listen(config.listen)
    _positive(config.health.probe_interval_s, "health.probe_interval_s")
    _positive(config.health.failures_to_eject, "health.failures_to_eject")
    _positive(config.health.base_ejection_s, "health.base_ejection_s")
    if not 0.0 <= config.routing.retry_ratio <= 1.0:
        raise ConfigError(f"routing.retry_ratio: must be within 0..1, got {config.routing.retry_ratio}")
    _positive(config.routing.hedge_factor, "routing.hedge_factor")
    if config.routing.default_policy not in POLICIES:
        raise ConfigError(
            f"routing.default_policy: unknown policy {config.routing.default_policy!r}; one of {', '.join(POLICIES)}"
        )
    if not 0.0 <= config.routing.balance_weight <= 1.0:
        raise ConfigError(f"routing.balance_weight: must be within 0..1, got {config.routing.balance_weight}")
    if not 0.0 <= config.routing.rescue_quantile < 1.0:
        raise ConfigError(
            f"routing.rescue_quantile: must be within 0..1 (1 excluded), got {config.routing.rescue_quantile}"
        )
    if not 0.0 <= config.routing.tail_quantile <= 1.0:
        raise ConfigError(f"routing.tail_quantile: must be within 0..1, got {config.routing.tail_quantile}")
    _positive(config.routing.tail_window, "routing.tail_window")
    if not (config.routing.tail_margin_ms >= 0 and math.isfinite(config.routing.tail_margin_ms)):
        raise ConfigError(f"routing.tail_margin_ms: must be >= 0, got {config.routing.tail_margin_ms}")
    tenant_names = set()
    for i, tenant in enumerate(config.tenants):
        key = f"tenants[{i}]"
        if tenant.name in tenant_names:
            raise ConfigError(f"{key}.name: tenant {tenant.name!r} is listed twice")
        tenant_names.add(tenant.name)
        if not tenant.keys:
            raise ConfigError(f"{key}.keys (tenant {tenant.name}): at least one key hash (railgate keys new)")
        for j, stored in enumerate(tenant.keys):
            if not _KEY_HASH.match(stored):
                raise ConfigError(f"{key}.keys[{j}] (tenant {tenant.name}): expected sha256$<salt>$<digest>")
        if tenant.priority not in PRIORITIES:
            raise ConfigError(f"{key}.priority (tenant {tenant.name}): one of {', '.join(PRIORITIES)}")
        if tenant.rate_per_s < 0 or tenant.burst < 0 or tenant.daily_quota < 0:
            raise ConfigError(f"{key} (tenant {tenant.name}): rate_per_s, burst and daily_quota must be >= 0")
    for j, stored in enumerate(config.admin_keys):
        if not _KEY_HASH.match(stored):
            raise ConfigError(f"admin_keys[{j}]: expected sha256$<salt>$<digest>")
    if config.artifacts.signing_key_file is not None:
        try:
            load_signing_key(config.artifacts.signing_key_file)
        except BadKey as exc:
            raise ConfigError(f"artifacts.signing_key_file: {exc}") from None
    for name in AccessLevels.__dataclass_fields__:
        level = getattr(config.access, name)
        if level not in ACCESS_LEVELS:
            raise ConfigError(f"access.{name}: expected one of {', '.join(ACCESS_LEVELS)}, got {level!r}")
    if config.access.inference != Access.TENANT:
        raise ConfigError(
            f"access.inference: must be tenant, got {config.access.inference!r} (the inference service checks "
            "the key and bills the tenant on every front; without tenants configured it is open)"
        )
    _check_state(config.state)
    _positive(config.admission.max_active_requests, "admission.max_active_requests")
    if not 0 < config.admission.shed_low_at <= config.admission.shed_normal_at <= 1:
        raise ConfigError("admission: need 0 < shed_low_at <= shed_normal_at <= 1")
    if config.shutdown_grace_s < 0:
        raise ConfigError(f"shutdown_grace_s: must be >= 0, got {config.shutdown_grace_s}")
    check_settings(config.tracing)
    if not config.hubs and not config.local.enabled:
        raise ConfigError("hubs: no hubs and local.enabled is false: nothing could serve a request")


def _check_state(state: State) -> None:
    if state.redis_url is not None:
        parts = urlsplit(state.redis_url)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ConfigError(f"state.redis_url: expected redis://host:port/db, got {state.redis_url!r}")
    if state.on_outage not in tuple(OnOutage):
        raise ConfigError(f"state.on_outage: expected one of {', '.join(OnOutage)}, got {state.on_outage!r}")
    if state.sqlite_synchronous not in ("normal", "full"):
        raise ConfigError(f"state.sqlite_synchronous: expected normal or full, got {state.sqlite_synchronous!r}")
    for name in ("lease_s", "quota_lease_rows", "heartbeat_s", "timeout_ms"):
        _positive(getattr(state, name), f"state.{name}")
