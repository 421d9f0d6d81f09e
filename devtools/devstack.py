"""The processes railgate is run against, as typed services: hubs, links, gateways, nginx.

Each is a ``devtools.procs.Child`` underneath (own process group, dies with its parent, output
drained, ready line or URL awaited, stopped by its own pid); this module knows what to run and
how to tell it is up:

- ``Hub`` (``hub.server``): a real tritonserver; ``start_hub`` picks its ports.
- ``Link``: ``railgate link``, the emulated backbone in front of a port; its port read back.
- ``Gateway``: ``railgate serve`` with a config file written for it; its URL read back.
- ``Nginx``: nginx as a plain reverse proxy (the benchmark's yardstick).

``DevStack`` starts any of them and stops them all in reverse order, whatever happened in between;
``DevStack.backbone`` is the demo's and the load test's shape: hubs, each behind a link, and one
gateway in front of them all. The demo, the benchmarks, the chaos scenarios, the load tests and the
test fixtures all start their processes from here.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml

from devtools.procs import ROOT, Child, StartError, free_port
from hub.server import GrpcTLS, Hub, HubConfig

__all__ = [
    "ROOT",
    "DevStack",
    "Gateway",
    "GrpcTLS",
    "Hub",
    "HubConfig",
    "HubPlan",
    "Link",
    "Nginx",
    "NginxTLS",
    "Service",
    "StartError",
    "next_line",
    "start_hub",
]

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def python_module(module: str, *args: str) -> list[str]:
    """The command line of ``python -m MODULE ARGS`` with this interpreter (children run from the checkout)."""
    return [sys.executable, "-m", module, *args]


def railgate(*args: str) -> list[str]:
    """The command line of ``railgate ARGS`` from this checkout (``python -m gateway.cli``)."""
    return python_module("gateway.cli", *args)


def start_hub(
    repository: Path,
    name: str,
    *,
    grpc: bool = False,
    metrics: bool = False,
    models: tuple[str, ...] = (),
    ready_timeout_s: float = 180.0,
    grpc_tls: GrpcTLS | None = None,
) -> Hub:
    """A real tritonserver over ``repository`` on free loopback ports (gRPC and metrics only if asked;
    ``grpc_tls``: Triton's own TLS on the gRPC port)."""
    config = HubConfig(
        repository=repository,
        http_port=free_port(),
        grpc_port=free_port() if grpc else None,
        metrics_port=free_port() if metrics else None,
        name=name,
        models=models,
        ready_timeout_s=ready_timeout_s,
        grpc_tls=grpc_tls,
    )
    return Hub(config).start()


class _Service:
    """What the typed services share: a ``child`` process, started on ``with`` unless running, stopped after."""

    child: Child

    def start(self, timeout_s: float = 60.0) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (nginx: SIGQUIT), a bounded wait, then SIGKILL to its group; its exit status."""
        return self.child.stop(timeout_s)

    def __enter__(self) -> Self:
        return self if self.child.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Link(_Service):
    """``railgate link``: ``delay_ms`` (+- ``jitter_ms``) each way in front of ``upstream_port``.

    ``port=0`` (the default) lets it pick a port, read back from its ready line.
    """

    def __init__(self, upstream_port: int, delay_ms: float, jitter_ms: float = 0.0, *, port: int = 0) -> None:
        args = railgate("link", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}")
        args += ["--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
        self.child = Child(args, f"link->{upstream_port}", ready_line=r"link listening 127\.0\.0\.1:(\d+)")
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Self:
        self.child.start(timeout_s)
        assert self.child.ready_match is not None
        self.port = int(self.child.ready_match.group(1))
        return self


class Gateway(_Service):
    """``railgate serve`` with ``config`` written to a file in ``workdir`` (none: its defaults).

    ``port=0`` (the default) lets it pick a port; ``url`` and ``port`` are read back from its
    ``railgate serving http://HOST:PORT ...`` line, ``models`` too where that line names them, and
    ``grpc_port`` / ``grpc_address`` where it ends ``grpc=HOST:PORT`` (the gRPC front is on).
    ``child.args`` may be extended before ``start`` (e.g. ``--workers 2``).
    """

    def __init__(
        self, workdir: Path, config: dict[str, Any] | None, port: int | None = None, *, log_level: str = "WARNING"
    ) -> None:
        self.config = config
        args = railgate("serve", "--port", str(port or 0), "--log-level", log_level)
        if config is not None:
            fd, path = tempfile.mkstemp(prefix="gateway-", suffix=".yaml", dir=workdir)
            with open(fd, "w") as f:
                f.write(yaml.safe_dump(config, sort_keys=False))
            args += ["--config", path]
        ready = (
            r"railgate serving (https?://\S+?:(\d+))(?:\s+models=(\S*))?(?:.*?\sgrpc=\S+?:(\d+))?"
            r"(?:.*?\sops=\S+?:(\d+))?"
        )
        self.child = Child(args, f"gateway:{port}" if port else "gateway", ready_line=ready)
        self.url = ""
        self.port = port or 0
        self.models: tuple[str, ...] = ()
        self.grpc_port: int | None = None  # read back from ``grpc=HOST:PORT`` when the gRPC front is on
        self.ops_port: int | None = None  # read back from ``ops=HOST:PORT`` when listen.ops is set

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        """The ops listener's URL (``listen.ops`` or ``--ops-port``), with the public port's scheme."""
        if self.ops_port is None:
            raise RuntimeError(f"{self.child.name} has no ops listener (set listen.ops)")
        return f"{self.url.split(':', 1)[0]}://127.0.0.1:{self.ops_port}"

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:PORT`` of the v2 gRPC front (``listen.grpc_port`` or ``--grpc-port``)."""
        if self.grpc_port is None:
            raise RuntimeError(f"{self.child.name} serves no gRPC front (set listen.grpc_port)")
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 60.0) -> Self:
        self.child.start(timeout_s)
        match = self.child.ready_match
        assert match is not None
        self.url, self.port = match.group(1), int(match.group(2))
        self.models = tuple(m for m in (match.group(3) or "").split(",") if m)
        self.grpc_port = int(match.group(4)) if match.group(4) else None
        self.ops_port = int(match.group(5)) if match.group(5) else None
        self.child.name = f"gateway:{self.port}"
        return self


NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
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
        listen 127.0.0.1:{port}{ssl} backlog=1024;
        {tls}
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


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def nginx_version(binary: str) -> str:
    reply = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (reply.stderr or reply.stdout).strip()


@dataclass(frozen=True, slots=True)
class NginxTLS:
    """nginx terminating TLS: its certificate and key; with ``client_ca``, clients need a cert it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def directives(self) -> str:
        lines = [
            f"ssl_certificate {self.cert};",
            f"ssl_certificate_key {self.key};",
            "ssl_session_cache shared:tls:1m;",
        ]
        if self.client_ca is not None:
            lines += [f"ssl_client_certificate {self.client_ca};", "ssl_verify_client on;"]
        return " ".join(lines)


class Nginx(_Service):
    """nginx 1.x as a plain reverse proxy (one worker, keep-alive upstream) in front of a port; with
    ``tls`` it terminates TLS (an https:// front for Triton's HTTP port, which has no TLS of its own)."""

    def __init__(self, name: str, binary: str, upstream_port: int, workdir: Path, tls: NginxTLS | None = None) -> None:
        self.tls = tls
        self.prefix = workdir / name
        self.prefix.mkdir(parents=True)
        # Workers run as an unprivileged user when started by root: let them reach the prefix.
        for folder in (workdir, self.prefix):
            folder.chmod(0o755)
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                prefix=self.prefix,
                upstream_port=upstream_port,
                port=self.port,
                ssl=" ssl" if tls else "",
                tls=tls.directives() if tls else "",
            )
        )
        args = [binary, "-c", str(conf), "-p", str(self.prefix), "-e", "stderr", "-g", "daemon off;"]
        self.child = Child(args, name, stop_signal=signal.SIGQUIT)  # SIGQUIT: the master waits for its worker

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> Self:
        self.child.start()
        try:  # nginx prints nothing when it is ready: its port accepting is the sign
            self.child.wait_until(self._listening, timeout_s, f"listening on 127.0.0.1:{self.port}")
        except BaseException:
            self.child.stop()
            raise
        return self

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False


@dataclass(slots=True)
class HubPlan:
    """A hub of a backbone stack: its name, backbone delay each way, price, and protocol to the gateway."""

    name: str
    delay_ms: float
    price_per_1k: float = 0.0
    carbon_g_per_kwh: float = 0.0
    region: str = "west"
    protocol: str = "http"


class DevStack:
    """Processes started together and stopped together, in reverse order, whatever happened between."""

    def __init__(self, repository: Path, workdir: Path | None = None) -> None:
        self.repository = repository
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="railgate-stack-"))
        self.hubs: dict[str, Hub] = {}
        self.gateways: list[Gateway] = []
        self._closing = contextlib.ExitStack()

    @classmethod
    def backbone(
        cls, repository: Path, plans: Sequence[HubPlan], gateway_config: dict[str, Any] | None = None
    ) -> DevStack:
        """Hubs, each behind a link of its own, and one gateway in front of them all, started."""
        stack = cls(repository)
        with stack.closed_on_error():
            entries = []
            for plan in plans:
                grpc = plan.protocol == "grpc"
                hub = stack.hub(plan.name, grpc=grpc)
                upstream = hub.config.grpc_port if grpc else hub.config.http_port
                assert upstream is not None
                link = stack.link(upstream, plan.delay_ms)
                entries.append(
                    {
                        "name": plan.name,
                        "url": link.address if grpc else link.url,
                        "region": plan.region,
                        "price_per_1k": plan.price_per_1k,
                        "carbon_g_per_kwh": plan.carbon_g_per_kwh,
                        "protocol": plan.protocol,
                    }
                )
            stack.gateway({"hubs": entries, **(gateway_config or {})})
        return stack

    @property
    def gateway_url(self) -> str:
        """The URL of the stack's (last started) gateway."""
        return self.gateways[-1].url

    def hub(self, name: str, *, grpc: bool = False, metrics: bool = False, models: tuple[str, ...] = ()) -> Hub:
        hub = self._closing.enter_context(start_hub(self.repository, name, grpc=grpc, metrics=metrics, models=models))
        self.hubs[name] = hub
        return hub

    def link(self, upstream_port: int, delay_ms: float, jitter_ms: float = 0.0) -> Link:
        return self._closing.enter_context(Link(upstream_port, delay_ms, jitter_ms))

    def gateway(self, config: dict[str, Any] | None) -> Gateway:
        gateway = self._closing.enter_context(Gateway(self.workdir, config))
        self.gateways.append(gateway)
        return gateway

    def child(self, child: Child, timeout_s: float = 60.0) -> Child:
        """Any other child (a faulty hub, say), started and owned by the stack."""
        child.start(timeout_s)
        self._closing.callback(child.stop)
        return child

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[DevStack]:
        """Close everything started so far if the block fails (a stack half up is no use)."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._closing.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- for tests written against the older stack ------------------------------------------------------


class Service(Child):
    """``railgate ARGS`` (or ``python -m module ARGS``) that is up once it prints ``ready_text``."""

    def __init__(self, args: list[str], ready_text: str, name: str, module: str = "gateway.cli") -> None:
        super().__init__(python_module(module, *args), name, ready_line=re.escape(ready_text))


def next_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The next stdout line of a plain ``Popen`` with piped text output, or its stderr if it exits first.

    For tests that drive a raw ``Popen`` on purpose; everything else waits with ``Child.start``.
    """
    import selectors

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
