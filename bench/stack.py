"""The processes under test: a real Triton hub, the gateway, ``railgate link`` and nginx, on loopback.

Every child runs in a session of its own (a Ctrl-C at the terminal reaches only the benchmark, which
then stops them in order) and, on Linux, is told by the kernel to exit if the benchmark dies
without cleaning up (PR_SET_PDEATHSIG). Output goes to log files in the run's work folder, never to
a pipe nobody reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from hub.server import Hub, HubConfig, HubError, free_port, group_members

ROOT = Path(__file__).resolve().parents[1]
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class StartError(Exception):
    """A process under test did not come up; the message names it and quotes its log."""


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the benchmark process goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log (a traceback's last lines name the error); caret-only lines left out."""
    with contextlib.suppress(OSError):
        text = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        kept = [ln for ln in text if ln and set(ln) - set("^~ ")]
        return " | ".join(kept[-lines:]) or "empty log"
    return "no log"


class Service:
    """One child process, logged to ``<workdir>/<name>.out|.err``; stopped by SIGTERM, then SIGKILL."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def spawn(self) -> None:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                self.args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # single-threaded parent: safe
            )

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first stdout line matching ``pattern``; StartError if the process exits or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.out_path.read_text(errors="replace").splitlines():
                    match = regex.search(line)
                    if match:
                        return match
            if self.process.poll() is not None:
                raise StartError(f"{self.name} exited with {self.process.returncode}: {_tail(self.err_path)}")
            time.sleep(0.05)  # polling a child's log: there is no event to wait on
        raise StartError(f"{self.name} printed no ready line within {timeout_s:.0f} s: {_tail(self.err_path)}")

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Anything it forked (nginx's worker) shares its process group: none of it may outlive it.
        if group_members(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HubService:
    """A real tritonserver (hub.server.Hub) serving only the benchmark's model."""

    def __init__(self, repository: Path, models: tuple[str, ...], ready_timeout_s: float = 180.0) -> None:
        config = HubConfig(
            repository=repository,
            http_port=free_port(),
            name="bench",
            models=models,
            ready_timeout_s=ready_timeout_s,
        )
        self.hub = Hub(config)

    @property
    def port(self) -> int:
        return self.hub.config.http_port

    @property
    def url(self) -> str:
        return self.hub.http_url

    @property
    def pgid(self) -> int:
        assert self.hub.process is not None
        return self.hub.process.pid  # tritonserver leads a session (and process group) of its own

    def __enter__(self) -> HubService:
        try:
            self.hub.start()
        except HubError as exc:
            raise StartError(f"hub: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.hub.stop()


def gateway_config(hub_url: str) -> dict[str, Any]:
    """The gateway's config: one hub, the local backend off (the hub serves everything), defaults otherwise."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "hubs": [{"name": "hub", "url": hub_url}],
        "local": {"enabled": False},
    }


class GatewayService(Service):
    """``railgate serve --config <yaml>`` in front of ``hub_url``; port 0, read back from its banner."""

    def __init__(self, name: str, hub_url: str, workdir: Path, model: str) -> None:
        self.config = gateway_config(hub_url)
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        args = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--log-level", "WARNING"]
        super().__init__(name, args, workdir)
        self.model = model
        self.url = ""

    def __enter__(self) -> GatewayService:
        self.spawn()
        try:
            match = self.wait_for_line(r"railgate serving (http://\S+) models=(\S+) backends=(\S+)", 90)
            if self.model not in match.group(2).split(","):
                raise StartError(f"{self.name} does not serve {self.model!r}: {match.group(0)}")
        except BaseException:
            self.stop()
            raise
        self.url = match.group(1)
        return self


def parse_batch_metrics(text: str) -> dict[str, float]:
    """Batches, rows and flush reasons from the gateway's Prometheus text (summed over labels)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in ("railgate_batch_size_count", "railgate_batch_size_sum"):
            key = "batches" if name.endswith("count") else "rows"
        elif name == "railgate_batches_total":
            reason = re.search(r'reason="([^"]*)"', rest)
            key = f"flush_{reason.group(1) if reason else '?'}"
        else:
            continue
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def batch_counters(gateway_url: str) -> dict[str, float]:
    """The gateway's batch counters now (empty if /metrics cannot be read)."""
    try:
        with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=5) as reply:
            return parse_batch_metrics(reply.read().decode())
    except (OSError, ValueError):
        return {}


class LinkService(Service):
    """``railgate link --delay-ms D`` in front of a port: the emulated backbone."""

    def __init__(self, name: str, upstream_port: int, delay_ms: float, workdir: Path) -> None:
        args = [
            sys.executable, "-m", "gateway.cli", "link",
            "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}", "--delay-ms", str(delay_ms),
        ]  # fmt: skip
        super().__init__(name, args, workdir)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LinkService:
        self.spawn()
        try:
            self.port = int(self.wait_for_line(r"link listening 127\.0\.0\.1:(\d+)", 30).group(1))
        except BaseException:
            self.stop()
            raise
        return self


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def nginx_version(binary: str) -> str:
    reply = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (reply.stderr or reply.stdout).strip()


NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream hub {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        keepalive_requests 1000000;
        client_max_body_size 64m;
        location / {{
            proxy_pass http://hub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class NginxService(Service):
    """nginx 1.x as a plain reverse proxy (one worker, keep-alive upstream) in front of a port."""

    stop_signal = signal.SIGQUIT  # graceful: the master waits for its worker

    def __init__(self, name: str, binary: str, upstream_port: int, workdir: Path) -> None:
        self.prefix = workdir / name
        self.prefix.mkdir(parents=True)
        # Workers run as an unprivileged user when started by root: let them reach the prefix.
        for folder in (workdir, self.prefix):
            folder.chmod(0o755)
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, upstream_port=upstream_port, port=self.port))
        args = [binary, "-c", str(conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        super().__init__(name, [*args, "-g", "daemon off;"], workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> NginxService:
        self.spawn()
        try:
            self._wait_listening(15.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(
                    f"{self.name} exited with {self.process.returncode}: {_tail(self.prefix / 'error.log')}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)  # polling a port: nginx prints nothing when it is ready
        raise StartError(f"{self.name} not listening on {self.port} after {timeout_s:.0f} s")
