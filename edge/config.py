"""Typed edge configuration: one YAML file, validated once at start-up, then passed in.

Parsed with the gateway's own validator, so errors read the same: an unknown key, a missing required
key or a value of the wrong type names the key by its path (``circuit.backoff_s: expected a number``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.offload import OffloadPolicy
from railcore.settings import ConfigError, build_section, read_yaml
from railcore.signing import BadKey, key_id, parse_public_key
from railcore.tls import ClientTLS, client_pem
from railcore.tracing import TracingSettings, check_settings

POLICIES: tuple[OffloadPolicy, ...] = tuple(OffloadPolicy)


@dataclass(frozen=True, slots=True)
class Listen:
    """Where firmware reaches the device's runtime: loopback TCP, or a Unix socket when ``unix`` is set."""

    host: str = "127.0.0.1"
    port: int = 8100
    unix: str | None = None


@dataclass(frozen=True, slots=True)
class Threads:
    intra_op: int = 1  # ONNX Runtime threads inside one run
    inter_op: int = 1


@dataclass(frozen=True, slots=True)
class Batching:
    """Local micro-batching of concurrent calls (the gateway's pure ``BatchQueue`` policy)."""

    max_batch_size: int = 32  # a cap: never above the model's own max_batch_size
    max_queue_delay_ms: float = 0.5
    max_concurrent_runs: int = 1  # while fewer runs of a model are in flight, a call runs at once
    # An async call (the server's) whose predicted run is at most this long runs on the event loop itself
    # when its model is idle: a hand-off to a pool thread and back costs more than such a run. 0: never.
    inline_max_ms: float = 0.25


@dataclass(frozen=True, slots=True)
class Sync:
    enabled: bool = True  # pull ``models`` from the gateway (needs gateway_url)
    interval_s: float = 300.0  # 0: only at start-up
    timeout_s: float = 30.0  # one model's download
    # Ed25519 public keys (base64 or hex) whose signature a model's manifest needs; two during a rotation.
    # Empty: updates are checked by the sha256 the gateway declares, unsigned (a warning at start-up).
    trusted_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Circuit:
    failure_threshold: int = 3  # consecutive gateway failures that open the circuit
    backoff_s: float = 1.0  # first wait before a half-open trial; doubles per failed trial
    max_backoff_s: float = 30.0


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    gateway_url: str | None = None  # None: offline-only device
    gateway_api_key: str | None = None  # sent as "Authorization: Bearer <key>" when the gateway has tenants
    # An https:// gateway's pinned CA (only it is trusted), and a client certificate for a mutual-TLS gateway.
    gateway_tls: ClientTLS | None = None
    repository: str = "models/repository"  # the device's local copy of the model repository
    # The device's own region, for residency: a call whose X-Allowed-Regions leave it out never runs
    # on the device (only on the gateway, within those regions).
    region: str = "device"
    models: tuple[str, ...] = ()  # models to hold locally and sync; empty: every model in the repository
    policy: str = OffloadPolicy.AUTO  # auto | local | remote (default for calls that name none)
    budget_ms: float = 100.0  # default latency budget for calls that carry none
    # Weight that makes local preferred when both fit: local runs when local_ms <= prefer_local * remote_ms.
    # 0 offloads whenever the gateway fits the budget; 1 picks the faster; large keeps work on the device.
    prefer_local: float = 0.0
    providers: tuple[str, ...] = ()  # empty: the best the installed onnxruntime offers (TensorRT > CUDA > CPU)
    threads: Threads = field(default_factory=Threads)
    batching: Batching = field(default_factory=Batching)
    sync: Sync = field(default_factory=Sync)
    circuit: Circuit = field(default_factory=Circuit)
    probe_interval_s: float = 2.0  # gateway health probe (RTT sample, half-open trial); 0: none
    remote_stale_s: float = 30.0  # a model's remote estimate older than this is re-measured
    listen: Listen = field(default_factory=Listen)
    max_body_bytes: int = 64 * 1024 * 1024
    tracing: TracingSettings = field(default_factory=TracingSettings)  # OpenTelemetry (railcore/tracing.py)


def load_edge_config(path: Path | None) -> EdgeConfig:
    """Read and validate a YAML config file (None: every default, offline)."""
    return EdgeConfig() if path is None else parse_edge_config(read_yaml(path))


def parse_edge_config(raw: Any) -> EdgeConfig:
    config: EdgeConfig = build_section(EdgeConfig, raw, "")
    _check(config)
    return config


def _positive(value: float, key: str) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _check(config: EdgeConfig) -> None:
    """Constraints the types alone cannot say."""
    if config.gateway_url is not None:
        parts = urlsplit(config.gateway_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"gateway_url: expected http://host:port, got {config.gateway_url!r}")
    if config.gateway_tls is not None:
        if config.gateway_url is None or urlsplit(config.gateway_url).scheme != "https":
            raise ConfigError(f"gateway_tls: set, so gateway_url must be https://, got {config.gateway_url!r}")
        client_pem(config.gateway_tls, "gateway_tls")  # every file read and parsed now, naming a bad one
    if config.policy not in POLICIES:
        raise ConfigError(f"policy: unknown policy {config.policy!r}; one of {', '.join(POLICIES)}")
    if len(set(config.models)) != len(config.models):
        raise ConfigError(f"models: a model is listed twice in {list(config.models)}")
    _positive(config.budget_ms, "budget_ms")
    if config.prefer_local < 0:
        raise ConfigError(f"prefer_local: must be >= 0, got {config.prefer_local}")
    _positive(config.threads.intra_op, "threads.intra_op")
    _positive(config.threads.inter_op, "threads.inter_op")
    _positive(config.batching.max_batch_size, "batching.max_batch_size")
    _positive(config.batching.max_concurrent_runs, "batching.max_concurrent_runs")
    if not (config.batching.inline_max_ms >= 0 and math.isfinite(config.batching.inline_max_ms)):
        raise ConfigError(f"batching.inline_max_ms: must be >= 0, got {config.batching.inline_max_ms}")
    if config.batching.max_queue_delay_ms < 0:
        raise ConfigError(f"batching.max_queue_delay_ms: must be >= 0, got {config.batching.max_queue_delay_ms}")
    if config.sync.interval_s < 0:
        raise ConfigError(f"sync.interval_s: must be >= 0 (0: only at start-up), got {config.sync.interval_s}")
    _positive(config.sync.timeout_s, "sync.timeout_s")
    ids: set[str] = set()
    for i, text in enumerate(config.sync.trusted_keys):
        try:
            ids.add(key_id(parse_public_key(text)))
        except BadKey as exc:
            raise ConfigError(f"sync.trusted_keys[{i}]: {exc}") from None
        if len(ids) != i + 1:
            raise ConfigError(f"sync.trusted_keys[{i}]: the same key is listed twice")
    _positive(config.circuit.failure_threshold, "circuit.failure_threshold")
    _positive(config.circuit.backoff_s, "circuit.backoff_s")
    if config.circuit.max_backoff_s < config.circuit.backoff_s:
        raise ConfigError(
            f"circuit.max_backoff_s: must be >= circuit.backoff_s ({config.circuit.backoff_s}), "
            f"got {config.circuit.max_backoff_s}"
        )
    if config.probe_interval_s < 0:
        raise ConfigError(f"probe_interval_s: must be >= 0 (0: no probes), got {config.probe_interval_s}")
    _positive(config.remote_stale_s, "remote_stale_s")
    _positive(config.max_body_bytes, "max_body_bytes")
    check_settings(config.tracing)
    if not 0 <= config.listen.port <= 65535:
        raise ConfigError(f"listen.port: expected 0..65535, got {config.listen.port}")
