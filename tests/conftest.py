"""Shared fixtures: the built model repository and real Triton hubs on free loopback ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.devstack import gateway_service, link_service
from hub.server import Hub, HubConfig, free_port

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "models" / "repository"


@pytest.fixture(scope="session")
def repository() -> Path:
    if not (REPOSITORY / "manifest.json").is_file():
        from models.build import build_repository

        build_repository(REPOSITORY)
    return REPOSITORY


@pytest.fixture(scope="session")
def manifest(repository: Path) -> dict:
    return json.loads((repository / "manifest.json").read_text())


def start_hub(repository: Path, name: str, grpc: bool = False) -> Hub:
    config = HubConfig(
        repository=repository,
        http_port=free_port(),
        grpc_port=free_port() if grpc else None,
        metrics_port=free_port(),
        name=name,
    )
    return Hub(config).start()


@pytest.fixture(scope="session")
def hub(repository: Path):
    """One real tritonserver serving every model in the repository, HTTP and gRPC."""
    h = start_hub(repository, "west-1", grpc=True)
    yield h
    h.stop()


class GatewayProcess:
    """``railgate serve`` in a subprocess on a free loopback port, with a config written for it."""

    def __init__(self, tmp: Path, config: dict | None, port: int | None = None) -> None:
        self.service, self.port = gateway_service(config, tmp, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        self.service.start(timeout_s)
        return self

    def stop(self) -> int | None:
        return self.service.stop()


def hub_entry(hub: Hub, name: str | None = None, grpc: bool = False, **extra) -> dict:
    port = hub.config.grpc_port if grpc else hub.config.http_port
    url = f"127.0.0.1:{port}" if grpc else f"http://127.0.0.1:{port}"
    entry = {"name": name or hub.config.name, "url": url, "region": "west", "price_per_1k": 0.02}
    if grpc:
        entry["protocol"] = "grpc"
    return {**entry, **extra}


@pytest.fixture(scope="session")
def gateway(hub: Hub, tmp_path_factory):
    """The gateway in front of the session hub (HTTP); its local backend is off, so every
    answer comes from the real hub."""
    config = {
        "hubs": [hub_entry(hub)],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5},
        "limits": {"max_body_bytes": 4 * 1024 * 1024},
    }
    g = GatewayProcess(tmp_path_factory.mktemp("gw"), config).start()
    yield g
    g.stop()


class LinkProcess:
    """``railgate link`` in a subprocess: a backbone with ``delay_ms`` each way in front of a port."""

    def __init__(self, upstream_port: int, delay_ms: float, jitter_ms: float = 0.0) -> None:
        self.service, self.port = link_service(upstream_port, delay_ms, jitter_ms)

    def __enter__(self) -> LinkProcess:
        self.service.start(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
