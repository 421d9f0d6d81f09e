"""Child processes for the dev stack, the benchmarks, the load tests and the test fixtures.

There is one way to start a child here, :func:`spawn`, and one way to stop it, :func:`terminate`:

- the child leads a session (and process group) of its own, so a Ctrl-C at the terminal reaches only
  its parent, which then stops its children in order, and so stopping it can take down whatever it
  forked (tritonserver's Python stubs, nginx's worker, the gateway's workers);
- the kernel sends it SIGTERM when its parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``, Linux);
- it is stopped by its own handle: its stop signal, a bounded wait, then SIGKILL to its group, never
  by a name pattern.

:class:`Child` is a long-running service built on that: its stdout and stderr are drained (into a
bounded tail and, optionally, a log file) so a pipe never fills, and ``start`` waits for a ready line
or a ready URL, or raises :class:`StartError` with what the child printed last. :func:`run` runs a
child to its end. The typed services (hub, link, gateway, nginx) are in ``devtools.devstack``.

A trap: the parent-death signal fires when the *thread* that spawned the child exits, not only the
process. Start long-lived children from a thread that outlives them (the main thread, in practice).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: children run from here, so ``python -m gateway.cli`` finds this tree's packages."""

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05  # for what has no event to wait on: a URL that starts answering, a process group emptying


class StartError(Exception):
    """A child did not come up: ``name`` did ``reason``; ``output`` is the last of what it printed."""

    def __init__(self, name: str, reason: str, output: str = "") -> None:
        self.name, self.reason, self.output = name, reason, output
        super().__init__(f"{name} {reason}: {output or 'it printed nothing'}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the ')' that closes the command name: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


# Resolved once, here, so the forked child only makes a foreign call: nothing between fork and exec
# takes a lock another thread of the parent (a drain thread) might hold.
_PRCTL = _prctl()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def preexec() -> None:  # runs in the child, before exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def child_options() -> dict[str, Any]:
    """The ``Popen`` options every child gets: its own session, SIGTERM when its parent dies, no stdin.

    Also for ``asyncio.create_subprocess_exec``, which takes the same keywords.
    """
    return {"start_new_session": True, "preexec_fn": _die_with_parent(os.getpid()), "stdin": subprocess.DEVNULL}


def spawn(
    args: Sequence[str],
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    text: bool = False,
) -> subprocess.Popen[Any]:
    """Start ``args`` as a child (see the module docstring for what every child gets)."""
    return subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=stdout,
        stderr=stderr,
        text=text,
        errors="replace" if text else None,
        **child_options(),
    )


def terminate(
    proc: subprocess.Popen[Any], timeout_s: float = 15.0, stop_signal: signal.Signals = signal.SIGTERM
) -> int:
    """Stop ``proc`` and its process group: ``stop_signal``, wait ``timeout_s``, then SIGKILL; its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Whatever it forked shares its group and may not outlive it (a stub, a worker, a grandchild).
    if group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # SIGKILL is sent; the kernel tears the processes down in its own time
    return proc.returncode


def run(
    args: Sequence[str],
    *,
    timeout_s: float,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] = subprocess.PIPE,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run ``args`` to its end; past ``timeout_s`` its group is killed and ``subprocess.TimeoutExpired`` raised."""
    proc = spawn(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        terminate(proc, timeout_s=0)  # a no-op once it exited; on a timeout or Ctrl-C, kills the group
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Child:
    """One long-running child process: started, waited on until ready, drained, stopped by its handle.

    ``args`` stays a list until ``start`` (a test may add flags). Ready means a line of its output
    matches ``ready_line`` (a regex; ``ready_match`` keeps the match, so a port it picked can be read
    back), or ``ready_url`` answers 200. Its output (stdout and stderr, interleaved) is kept in
    ``output`` (the latest ``keep_lines`` lines) and, with ``log``, written to that file.
    """

    def __init__(
        self,
        args: Sequence[str],
        name: str,
        *,
        ready_line: str | None = None,
        ready_url: str | None = None,
        cwd: Path = ROOT,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        keep_lines: int = 200,
    ) -> None:
        self.args = list(args)
        self.name = name
        self.ready_line = ready_line
        self.ready_url = ready_url
        self.cwd = cwd
        self.env = env
        self.log = log
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[str] | None = None
        self.ready_match: re.Match[str] | None = None
        self.output: deque[str] = deque(maxlen=keep_lines)
        self._changed = threading.Condition()
        self._watches: list[_Watch] = []
        self._eof = False

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 60.0) -> Child:
        """Spawn it and wait (at most ``timeout_s``) until it is ready; StartError, and stopped, if not."""
        self.output.clear()
        self._eof = False
        self.process = spawn(
            self.args, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(
            target=self._drain, args=(self.process.stdout,), daemon=True, name=f"drain-{self.name}"
        ).start()
        try:
            deadline = time.monotonic() + timeout_s
            if self.ready_line is not None:
                self.ready_match = self.wait_for_line(self.ready_line, deadline - time.monotonic())
            if self.ready_url is not None:
                self.wait_for_url(self.ready_url, deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self, stream: IO[str]) -> None:
        log = self.log.open("a", buffering=1, errors="replace") if self.log is not None else None
        try:
            for line in stream:
                with self._changed:
                    self.output.append(line)
                    for watch in self._watches:
                        watch.offer(line)
                    self._changed.notify_all()
                if log is not None:
                    log.write(line)
        finally:
            if log is not None:
                log.close()
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first line of its output (since start) matching ``pattern``; StartError if it exits or time runs out."""
        watch = _Watch(re.compile(pattern))
        with self._changed:
            for line in self.output:
                watch.offer(line)
            self._watches.append(watch)
            try:
                self._changed.wait_for(lambda: watch.match is not None or self._eof, timeout=max(0.0, timeout_s))
            finally:
                self._watches.remove(watch)
        if watch.match is not None:
            return watch.match
        if self._eof:
            raise StartError(self.name, f"exited with {self._exit_status()}", self.last_output())
        raise StartError(
            self.name, f"printed no line matching {pattern!r} within {timeout_s:.0f} s", self.last_output()
        )

    def wait_for_url(self, url: str, timeout_s: float) -> None:
        """Until ``url`` answers 200; StartError if the child exits first or time runs out."""
        self.wait_until(lambda: _answers(url), timeout_s, f"{url} did not answer 200")

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``check`` until it holds; StartError naming ``what`` if the child exits first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                raise StartError(self.name, f"exited with {self._exit_status()}", self.last_output())
            if check():
                return
            if time.monotonic() >= deadline:
                raise StartError(self.name, f"not ready: {what} within {timeout_s:.0f} s", self.last_output())
            with self._changed:  # wakes early on new output or exit; otherwise a short poll
                self._changed.wait(_POLL_S)

    def _exit_status(self) -> int | str:
        if self.process is None:
            return "?"
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(5)
        return "? (its output closed, it still runs)"

    def last_output(self, lines: int = 5) -> str:
        """Its last non-blank lines, joined (a traceback's last lines name the error)."""
        with self._changed:
            text = [ln.strip() for ln in self.output]
        kept = [ln for ln in text if ln and set(ln) - set("^~ ")]  # caret-only traceback lines left out
        return " | ".join(kept[-lines:])

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> int | None:
        """SIGKILL its whole group now (a crash, for fault tests); its exit status."""
        return self.stop(timeout_s=0, stop_signal=signal.SIGKILL)

    def stop(self, timeout_s: float = 15.0, stop_signal: signal.Signals | None = None) -> int | None:
        """Stop it and its group (see :func:`terminate`); its exit status, or None if it was not started."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        return terminate(proc, timeout_s, stop_signal or self.stop_signal)

    def __enter__(self) -> Child:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Watch:
    """A pattern a waiter looks for in a child's output, and the first line that matched it."""

    def __init__(self, regex: re.Pattern[str]) -> None:
        self.regex = regex
        self.match: re.Match[str] | None = None

    def offer(self, line: str) -> None:
        if self.match is None:
            self.match = self.regex.search(line)


def _answers(url: str) -> bool:
    with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=1) as reply:
        return reply.status == 200
    return False
