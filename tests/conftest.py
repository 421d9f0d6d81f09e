"""Shared fixtures: the built model repository and real Triton hubs on free loopback ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.devstack import Gateway, Hub, Link
from devtools.devstack import start_hub as _start_hub
from devtools.procs import Child

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
    """A real hub on free loopback ports, its metrics port open (HTTP always, gRPC if asked)."""
    return _start_hub(repository, name, grpc=grpc, metrics=True)


@pytest.fixture(scope="session")
def hub(repository: Path):
    """One real tritonserver serving every model in the repository, HTTP and gRPC."""
    h = start_hub(repository, "west-1", grpc=True)
    yield h
    h.stop()


class GatewayProcess(Gateway):
    """``railgate serve`` as a child (``devtools.devstack.Gateway``) on a loopback port it picks.

    ``service`` is its child process: ``args`` (extendable before ``start``), ``process``, ``output``.
    """

    @property
    def service(self) -> Child:
        return self.child


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


LinkProcess = Link
"""``railgate link`` as a child: a backbone with ``delay_ms`` each way in front of a port (a context manager)."""


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real redis-server on a free loopback port (append-only, its own directory), stopped after."""
    from devtools.redis_server import RedisServer
    from tests.sysdeps import binary

    server = RedisServer(binary("redis-server", "redis-server"), tmp_path / "redis").start()
    yield server
    server.stop()
