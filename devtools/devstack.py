"""A local stack of real processes for the demo, benchmarks and load tests: hubs, links, a gateway.

Every process is started from the ``railgate`` CLI (or ``hub.server.Hub``), waited on until it prints
its ready line, and stopped in reverse order by ``DevStack.close``, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hub.server import Hub, HubConfig, free_port

ROOT = Path(__file__).resolve().parents[1]


class StartError(Exception):
    """A process of the stack did not start; the message carries what it printed."""


class Service:
    """One ``railgate`` subprocess (or another ``module``) that prints a ready line containing ``ready_text``."""

    def __init__(self, args: list[str], ready_text: str, name: str, module: str = "gateway.cli") -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.ready_text = ready_text
        self.name = name
        self.process: subprocess.Popen[str] | None = None
        self.banner = ""
        self.output: deque[str] = deque(maxlen=200)  # its latest lines, for a post-mortem

    def start(self, timeout_s: float = 60.0) -> Service:
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = next_line(self.process, timeout_s)
        if self.ready_text not in self.banner:
            self.stop()
            raise StartError(f"{self.name} did not start: {self.banner.strip()!r}")
        # Keep reading what it prints: an unread pipe fills up and would block a chatty process.
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._drain, args=(stream,), daemon=True, name=f"drain-{self.name}").start()
        return self

    def _drain(self, stream) -> None:
        for line in stream:
            self.output.append(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 30.0) -> int | None:
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def next_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's next stdout line, or its stderr if it exits first (bounded by ``timeout_s``)."""
    assert proc.stdout is not None and proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=timeout_s):
        return f"<nothing within {timeout_s} s>"
    line = proc.stdout.readline()
    if not line:  # stdout closed: the process is exiting; its reason is on stderr
        proc.wait(timeout=timeout_s)
        return proc.stderr.read()
    return line


def link_service(upstream_port: int, delay_ms: float, jitter_ms: float = 0.0) -> tuple[Service, int]:
    port = free_port()
    args = ["link", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}"]
    args += ["--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
    return Service(args, "link listening", f"link:{port}"), port


def gateway_service(config: dict[str, Any] | None, workdir: Path, port: int | None = None) -> tuple[Service, int]:
    port = port or free_port()
    args = ["serve", "--port", str(port), "--log-level", "WARNING"]
    if config is not None:
        path = workdir / f"gateway-{port}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        args += ["--config", str(path)]
    return Service(args, "railgate serving", f"gateway:{port}"), port


@dataclass(slots=True)
class HubPlan:
    """A hub of the stack: its name, backbone delay each way, price, and protocol to the gateway."""

    name: str
    delay_ms: float
    price_per_1k: float = 0.0
    carbon_g_per_kwh: float = 0.0
    region: str = "west"
    protocol: str = "http"


@dataclass(slots=True)
class DevStack:
    """Hubs, each behind its own link, and one gateway in front of them all."""

    repository: Path
    hubs: list[HubPlan]
    gateway_config: dict[str, Any] = field(default_factory=dict)
    running_hubs: dict[str, Hub] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    gateway_port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="railgate-stack-")))

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> DevStack:
        try:
            entries = []
            for plan in self.hubs:
                grpc = plan.protocol == "grpc"
                hub = Hub(
                    HubConfig(self.repository, free_port(), grpc_port=free_port() if grpc else None, name=plan.name)
                ).start()
                self.running_hubs[plan.name] = hub
                upstream = hub.config.grpc_port if grpc else hub.config.http_port
                assert upstream is not None
                link, port = link_service(upstream, plan.delay_ms)
                self.services.append(link.start())
                url = f"127.0.0.1:{port}" if grpc else f"http://127.0.0.1:{port}"
                entries.append(
                    {
                        "name": plan.name,
                        "url": url,
                        "region": plan.region,
                        "price_per_1k": plan.price_per_1k,
                        "carbon_g_per_kwh": plan.carbon_g_per_kwh,
                        "protocol": plan.protocol,
                    }
                )
            config = {"hubs": entries, **self.gateway_config}
            gateway, self.gateway_port = gateway_service(config, self.workdir)
            self.services.append(gateway.start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()
        self.services.clear()
        for hub in self.running_hubs.values():
            with contextlib.suppress(Exception):
                hub.stop()
        self.running_hubs.clear()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
