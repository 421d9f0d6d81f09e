"""Shared fixtures: the built model repository and real Triton hubs on free loopback ports."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
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


class GatewayProcess:
    """``railgate serve`` in a subprocess on a free loopback port, with a config written for it."""

    def __init__(self, tmp: Path, config: dict | None, name: str = "gateway") -> None:
        import yaml

        self.port = free_port()
        self.config_path = tmp / f"{name}.yaml"
        args = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--log-level", "WARNING"]
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
            args += ["--config", str(self.config_path)]
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.banner = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = read_line(self.process, timeout_s)
        if "railgate serving" not in self.banner:
            self.stop()
            raise RuntimeError(f"gateway did not start: {self.banner!r}")
        return self

    def stop(self) -> int | None:
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's next stdout line, or its stderr if it exits first (bounded by ``timeout_s``)."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=timeout_s):
        return f"<nothing within {timeout_s} s>"
    line = proc.stdout.readline()
    if not line:  # stdout closed: the process is exiting; its reason is on stderr
        proc.wait(timeout=timeout_s)
        return proc.stderr.read()
    return line


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
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "gateway.cli", "link",
            "--listen", f"127.0.0.1:{self.port}", "--upstream", f"127.0.0.1:{upstream_port}",
            "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms),
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LinkProcess:
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = read_line(self.process, 30)
        if "link listening" not in line:
            self.__exit__()
            raise RuntimeError(f"link did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
