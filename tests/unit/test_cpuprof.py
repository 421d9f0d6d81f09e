"""devtools.cpuprof, the CPU-time sampler ``make profile`` runs the gateway under: its stacks name the
code that spent the CPU, weighed by that CPU, and a process waiting on a socket or a sleep is not charged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.procstat import process_cpu_s
from bench.profile import read_stacks
from devtools import cpuprof

ROOT = Path(__file__).resolve().parents[2]

# Spends about 0.3 s of CPU in ``burn`` and about 0.6 s waiting in ``wait`` (no CPU), in turns.
WORKLOAD = """
import time

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(200))

def wait(seconds):
    time.sleep(seconds)

for _ in range(3):
    burn(0.1)
    wait(0.2)
"""


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "workload.py").write_text(textwrap.dedent(WORKLOAD))
    out = tmp_path / "stacks.raw"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    args = [sys.executable, "-m", "devtools.cpuprof", "--out", str(out), *extra, "-m", "workload"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    return done, out


def test_samples_are_weighed_by_cpu_and_name_the_burning_function(tmp_path: Path) -> None:
    done, out = _run(tmp_path, "--now")
    assert done.returncode == 0, done.stderr
    stacks = read_stacks(out.read_text())
    total_us = sum(stacks.values())
    burning = sum(n for stack, n in stacks.items() if any(f.startswith("burn (") for f in stack))
    waiting = sum(n for stack, n in stacks.items() if any(f.startswith("wait (") for f in stack))
    # 0.3 s of CPU in burn: the weights add up to the CPU spent, not to the 0.9 s the run took.
    assert 250_000 <= burning <= 400_000, (burning, total_us)
    assert waiting < 0.05 * total_us, (waiting, total_us)
    assert all(stack[-1].endswith(")") and ":" in stack[-1] for stack in stacks), "frames carry file:line"


def test_nothing_is_written_unless_sampling_was_started(tmp_path: Path) -> None:
    done, out = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not out.exists()


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _cpu_s(pid: int) -> float:
    cpu = process_cpu_s(pid)
    assert cpu is not None, f"/proc/{pid}/stat is not readable"
    return cpu


def test_usr1_starts_and_usr2_writes(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    (tmp_path / "spin.py").write_text(
        f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\n"
        "end = time.monotonic() + 60\nwhile time.monotonic() < end:\n    sum(range(200))\n"
    )
    out = tmp_path / "stacks.raw"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    child = subprocess.Popen(cpuprof.wrapped([sys.executable, "-m", "spin"], out), env=env)
    try:
        _wait_for(ready.exists, 30, "the module to run (the sampler's handlers are set before it)")
        os.kill(child.pid, signal.SIGUSR1)
        started = _cpu_s(child.pid)
        _wait_for(lambda: _cpu_s(child.pid) - started >= 0.2, 30, "0.2 s of the child's CPU")
        assert not out.exists()
        os.kill(child.pid, signal.SIGUSR2)
        _wait_for(out.exists, 30, "the stacks to be written")
        stacks = read_stacks(out.read_text())
        assert any(any("spin.py" in f for f in stack) for stack in stacks)
        assert sum(stacks.values()) >= 100_000  # at least half of the 0.2 s seen
        assert child.poll() is None  # the signals did not end it
    finally:
        child.kill()
        child.wait(timeout=10)
