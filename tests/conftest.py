"""Shared fixtures: the built model repository and real Triton hubs on free loopback ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
