"""Start and stop a real Triton Inference Server (the tritonserver nvidia-pytriton bundles).

``Hub`` owns one tritonserver process and the Python-backend stubs it spawns, as a
``devtools.procs.Child``: they run in a process group of their own (stopping the hub can never
leave a stub behind) and die with the process that started them. What is Triton's own is here: the
runtime copy of the repository, the backend folder, the library path the stub needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import socket
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from devtools.procs import Child, StartError, free_port, group_members
from hub.repository import write_runtime_repository
from railcore.repository import RepositoryError, RepositoryModel, read_repository

__all__ = ["GrpcTLS", "Hub", "HubConfig", "HubError", "free_port", "group_members"]


class HubError(StartError):
    """The hub could not start (the message names the port, path or Triton's own error)."""

    def __init__(self, message: str) -> None:
        super().__init__("hub", "did not start", message)

    def __str__(self) -> str:
        return self.output


@dataclass(frozen=True, slots=True)
class GrpcTLS:
    """Triton's own TLS on its gRPC port (``--grpc-use-ssl``); ``mutual``: clients need a cert ``root_cert`` signed."""

    cert: Path
    key: Path
    root_cert: Path | None = None
    mutual: bool = False


@dataclass(slots=True)
class HubConfig:
    repository: Path
    http_port: int
    grpc_port: int | None = None
    metrics_port: int | None = None
    name: str = "hub"
    host: str = "127.0.0.1"
    models: tuple[str, ...] = ()
    intra_op_threads: int = 1
    ready_timeout_s: float = 180.0
    # How long tritonserver's shutdown waits for in-flight requests and open HTTP connections (its
    # default, 30 s, outlasts ``Hub.stop``'s 20 s wait: a client left connected got the hub SIGKILLed).
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    grpc_tls: GrpcTLS | None = None  # the HTTP port stays plain: Triton has no TLS there (put nginx in front)


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise HubError(f"{what} port {host}:{port} is already in use ({exc.strerror})") from exc


def _pytriton_dirs() -> tuple[Path, Path, Path]:
    """(tritonserver binary, python backend dir, bundled shared libraries)."""
    try:
        import pytriton
    except ImportError as exc:
        raise HubError("nvidia-pytriton is not installed: pip install 'railgate[hub]'") from exc
    root = Path(pytriton.__file__).parent
    dist = root / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():  # editable installs of pytriton keep them here
        libs = dist / "external_libs"
    return dist / "bin" / "tritonserver", dist / "backends" / "python", libs


def _server_env(libs: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The Python-backend stub links libpython3.11.so; without this it finds the system's copy,
    # which does not match this interpreter's stdlib (NOTES.md: '_recursion_count' error).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    # The stub embeds Python without our venv: hand it this interpreter's packages.
    packages = [*site.getsitepackages(), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = ":".join(p for p in packages if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _grpc_tls_args(tls: GrpcTLS) -> list[str]:
    """tritonserver's own gRPC TLS flags (as the bundled binary's ``--help`` names them)."""
    for path in (tls.cert, tls.key, tls.root_cert):
        if path is not None and not Path(path).is_file():
            raise HubError(f"gRPC TLS file {path} does not exist")
    if tls.mutual and tls.root_cert is None:
        raise HubError("gRPC mutual TLS needs root_cert (the CA that signs the clients' certificates)")
    args = [f"--grpc-server-cert={tls.cert}", f"--grpc-server-key={tls.key}"]
    if tls.root_cert is not None:
        args.append(f"--grpc-root-cert={tls.root_cert}")
    args.append("--grpc-use-ssl-mutual=true" if tls.mutual else "--grpc-use-ssl=true")
    return args


class Hub:
    """A running tritonserver over a model repository. Use as a context manager or start()/stop()."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.child: Child | None = None
        self.workdir: Path | None = None
        self.models: list[str] = []
        self.startup_s: float | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def process(self) -> Popen[str] | None:
        """tritonserver's process while it runs (it leads the hub's process group)."""
        return self.child.process if self.child is not None else None

    @property
    def pid(self) -> int:
        assert self.child is not None, f"hub {self.config.name} is not running"
        return self.child.pid

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "tritonserver.log" if self.workdir else None

    def start(self) -> Hub:
        cfg = self.config
        t0 = time.monotonic()
        try:
            models = read_repository(cfg.repository, cfg.models)
        except RepositoryError as exc:
            raise HubError(str(exc)) from exc
        ports = {"http": cfg.http_port, "grpc": cfg.grpc_port, "metrics": cfg.metrics_port}
        for what, port in ports.items():
            if port:
                _check_port_free(cfg.host, port, what)
        binary, python_backend, libs = _pytriton_dirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"railgate-hub-{cfg.name}-"))
        try:
            args = self._prepare(binary, python_backend, models)
            self.child = Child(
                args,
                f"tritonserver {cfg.name}",
                ready_url=f"{self.http_url}/v2/health/ready",
                env=_server_env(libs),
                log=self.log_path,
            )
            self.child.start(cfg.ready_timeout_s)
        except StartError as exc:
            error = exc if isinstance(exc, HubError) else HubError(f"tritonserver {exc.reason}: {self._log_error()}")
            self.stop()
            raise error from exc
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _prepare(self, binary: Path, python_backend: Path, models: list[RepositoryModel]) -> list[str]:
        """The backend folder and runtime repository in the work dir; tritonserver's arguments."""
        cfg = self.config
        assert self.workdir is not None
        backends = self.workdir / "backends" / "python"
        backends.mkdir(parents=True)
        for item in python_backend.iterdir():
            if item.is_file():
                os.symlink(item, backends / item.name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = python_backend.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise HubError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
        os.symlink(stub, backends / "triton_python_backend_stub")
        runtime = self.workdir / "repository"
        write_runtime_repository(models, runtime, cfg.intra_op_threads)
        self.models = [m.name for m in models]
        args = [
            str(binary),
            f"--model-repository={runtime}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--log-verbose=0",
            f"--exit-timeout-secs={cfg.exit_timeout_s}",
        ]
        args += (
            [f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}"] if cfg.grpc_port else ["--allow-grpc=false"]
        )
        if cfg.grpc_port and cfg.grpc_tls is not None:
            args += _grpc_tls_args(cfg.grpc_tls)
        if cfg.metrics_port:
            args += [f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}", "--allow-metrics=true"]
        else:
            args += ["--allow-metrics=false"]
        return args + list(cfg.extra_args)

    def _log_error(self) -> str:
        """The most telling line of Triton's log: the first error, or the last line."""
        if not self.log_path or not self.log_path.exists():
            return "no log"
        lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        for line in lines:  # CPU-only machines log CUDA errors that never matter here
            if "cuda" not in line.lower() and (line.startswith("E") or "error" in line.lower()):
                return line
        return lines[-1] if lines else "empty log"

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal tritonserver alone (SIGSTOP makes a hub that accepts and never answers)."""
        if self.child is not None:
            self.child.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL tritonserver and its stubs at once (a crash, for fault tests); the work dir stays."""
        if self.child is not None:
            self.child.kill()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM tritonserver, wait, then make sure nothing of its process group survives; its exit
        status (negative: the signal that ended it), None if it was not running."""
        child, self.child = self.child, None
        status = None if child is None else child.stop(timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return status

    def __enter__(self) -> Hub:
        return self if self.child is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
