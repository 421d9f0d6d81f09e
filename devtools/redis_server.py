"""A real ``redis-server`` on a free loopback port, with its own directory and append-only file.

Started and stopped by its handle (``devtools.procs.Child``); ``stop`` then ``start`` again is a
restart on the same port and directory, which reloads what the append-only file holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self

from devtools.procs import Child, free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on 127.0.0.1: ``appendonly yes`` (fsync ``appendfsync``), no RDB snapshots."""

    def __init__(self, binary: str, workdir: Path, port: int = 0, appendfsync: str = "everysec") -> None:
        self.port = port or free_port()
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(workdir)]
        args += ["--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--daemonize", "no"]
        args += ["--protected-mode", "no", "--loglevel", "notice"]
        self.child = Child(args, f"redis:{self.port}", ready_line=r"Ready to accept connections")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> Self:
        self.child.start(timeout_s)
        return self

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (Redis writes its append-only file and exits), a bounded wait, then SIGKILL."""
        return self.child.stop(timeout_s)

    def __enter__(self) -> Self:
        return self if self.child.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
