"""CPU time of processes and of the whole machine, read from /proc (Linux only; None elsewhere)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ... (None if gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process, all its threads included."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def group_cpu_s(pgid: int) -> float | None:
    """User + system CPU seconds of the live processes of a process group (a hub and its stubs)."""
    total, found = 0.0, False
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(ValueError, IndexError):
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / _TICKS
                found = True
    return total if found else None


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of every core since boot, from the first line of /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICKS, sum(ticks) / _TICKS


def steal_s() -> tuple[float, int] | None:
    """(seconds, cores): CPU time the hypervisor gave to others while this VM's cores wanted to run,
    summed over every core since boot (the 8th field of /proc/stat's first line, in clock ticks).

    On a virtual machine it is the time a process here could neither run nor queue visibly: a stall the
    guest's own scheduler does not see. 0 on bare metal."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        steal = int(lines[0].split()[8])
    except (OSError, IndexError, ValueError):
        return None
    cores = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return steal / _TICKS, cores


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_counters() -> dict[str, int]:
    """Machine-wide TCP counters that reveal connection trouble: full accept queues, retried SYNs.

    A listener whose backlog overflows drops SYNs, and the client retries after 1 s: that shows
    up as a p99 near one second, not as an error.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    counters: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
            if name in TCP_COUNTERS:
                counters[name] = int(value)
    return counters


def idle_policy(sysfs: Path = Path("/sys")) -> str | None:
    """How this machine's idle cores wait, from sysfs: the cpuidle driver and, under a hypervisor's
    ``haltpoll`` driver, how long an idle core polls before it halts (``guest_halt_poll_ns``).

    It matters to every round trip measured here: a core that halts at once (0 ns) leaves the guest on
    each idle wait (a VM exit) and comes back to cold caches, which at concurrency 1 costs more than
    the Python work of a small call. None where sysfs does not say."""
    base = sysfs / "devices/system/cpu/cpuidle"
    try:
        driver = (base / "current_driver").read_text().strip()
    except OSError:
        return None
    text = f"cpuidle driver {driver}"
    with contextlib.suppress(OSError):
        poll_ns = int((sysfs / "module/haltpoll/parameters/guest_halt_poll_ns").read_text())
        text += f", guest_halt_poll_ns={poll_ns}"
        if poll_ns == 0:
            text += " (an idle core halts at once: a VM exit per idle wait)"
    return text
