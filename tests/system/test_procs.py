"""The one way a child process is started and stopped (``devtools.procs``), on small Python children."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from devtools.procs import Child, StartError

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling a condition with a bound: a pid has no event to wait on
    return not alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed() -> None:
    parent_code = (
        "import sys, time\nfrom devtools.procs import Child\n"
        f"child = Child([sys.executable, '-c', {SLEEPER!r}], 'sleeper', ready_line='up').start(30)\n"
        "print(child.pid, flush=True)\ntime.sleep(60)\n"
    )
    parent = Child(python(parent_code), "parent", ready_line=r"^(\d+)$").start(30)
    assert parent.ready_match is not None
    orphan = int(parent.ready_match.group(1))
    try:
        assert alive(orphan)
        parent.kill()  # SIGKILL: the parent runs no clean-up; the sleeper leads a group of its own
        assert gone_within(orphan, 10), "the child outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def test_a_child_that_exits_before_it_is_ready_is_a_start_error_quoting_it() -> None:
    child = Child(python("import sys; print('bad key: listen.port'); sys.exit(3)"), "broken", ready_line="ready")
    with pytest.raises(StartError, match=r"^broken exited with 3: bad key: listen\.port$"):
        child.start(30)
    assert child.process is None


def test_a_child_silent_past_its_timeout_is_stopped_and_named() -> None:
    child = Child(python(SLEEPER), "silent", ready_line="ready")
    with pytest.raises(StartError, match=r"^silent printed no line matching 'ready' within 2 s"):
        child.start(2.0)
    assert child.process is None


def test_a_chatty_child_never_blocks_on_a_full_pipe() -> None:
    code = "import time\nfor i in range(20000): print('x' * 100, i)\nprint('ready', flush=True)\ntime.sleep(60)"
    with Child(python(code), "chatty", ready_line="^ready$", keep_lines=10) as child:  # 2 MB before its ready line
        assert child.running
        assert list(child.output)[-1] == "ready\n" and len(child.output) == 10


def test_stopping_a_child_takes_down_what_it_forked() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = (
        "import subprocess, sys, time\n"
        f"grandchild = subprocess.Popen([sys.executable, '-c', {stubborn!r}])\n"
        "print(grandchild.pid, flush=True)\ntime.sleep(60)\n"
    )
    child = Child(python(code), "forker", ready_line=r"^(\d+)$").start(30)
    assert child.ready_match is not None
    grandchild = int(child.ready_match.group(1))
    try:
        assert child.stop(timeout_s=10) == -signal.SIGTERM
        assert not alive(grandchild), "a process it forked (ignoring SIGTERM) outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
