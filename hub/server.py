"""Start and stop a real Triton Inference Server (the tritonserver nvidia-pytriton bundles).

``Hub`` owns one tritonserver process and the Python-backend stubs it spawns. They run in a
process group of their own, so stopping the hub can never leave a stub behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hub.repository import write_runtime_repository
from railcore.repository import RepositoryError, read_repository


class HubError(Exception):
    """The hub could not start (the message names the port, path or Triton's own error)."""


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
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (tests and the demo pick hub ports with it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # Fields after the ')' that closes the command name: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, deadline: float) -> None:
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL was sent; the kernel needs a moment to tear the processes down


class Hub:
    """A running tritonserver over a model repository. Use as a context manager or start()/stop()."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.models: list[str] = []
        self.startup_s: float | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

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
        ]
        args += (
            [f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}"] if cfg.grpc_port else ["--allow-grpc=false"]
        )
        if cfg.metrics_port:
            args += [f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}", "--allow-metrics=true"]
        else:
            args += ["--allow-metrics=false"]
        args += list(cfg.extra_args)
        assert self.log_path is not None
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it; closed after Popen
        try:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=_server_env(libs), start_new_session=True
            )
        finally:
            log.close()
        try:
            self._wait_ready(t0 + cfg.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HubError(f"tritonserver exited with {self.process.returncode}: {self._log_error()}")
            with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
            time.sleep(0.1)  # polling a child process; there is no event to wait on
        raise HubError(f"tritonserver not ready at {url} after {self.config.ready_timeout_s:.0f} s")

    def _log_error(self) -> str:
        """The most telling line of Triton's log: the first error, or the last line."""
        if not self.log_path or not self.log_path.exists():
            return "no log"
        lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        for line in lines:
            if line.startswith("E") or ("error" in line.lower() and "cuda" not in line.lower()):
                return line
        return lines[-1] if lines else "empty log"

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM tritonserver, wait, then make sure nothing of its process group survives."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout_s)
            # Stubs are in tritonserver's process group; take the group down whatever happened.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_group_gone(proc.pid, time.monotonic() + 5.0)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
