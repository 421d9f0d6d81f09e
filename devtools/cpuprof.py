"""A CPU-time sampling profiler for one Python process: ``python -m devtools.cpuprof --out F -m MODULE ARGS``.

Why not only py-spy: py-spy samples on the wall clock and counts a thread as busy while it is runnable,
which includes the time it sits preempted. On a machine whose cores are shared by the load, the gateway
and the hub, the gateway is preempted mostly where it wakes another process (a write to the hub's
socket, a reply to the client), so py-spy charges those lines with time the gateway never ran. This
sampler is driven by ``ITIMER_PROF``, which counts only the CPU time the process spends, and weighs each
sample by the main thread's CPU time (``time.thread_time``) since the previous one, so a sample set off
by another thread's work weighs next to nothing.

Control, so that only the load's window is sampled: SIGUSR1 clears the counts and starts sampling,
SIGUSR2 stops and writes ``--out``; at exit what was sampled is written too (if sampling never
started, nothing is). ``--out`` is py-spy's collapsed-stack format, ``frame;frame;... weight``, root first,
a frame as ``function (path:line)``, the weight in microseconds of the main thread's CPU, so
``bench.profile``'s readers take it as they are.

Limits, named: only the main thread's stacks (the gateway's event loop; the gRPC front's C-core thread
and the executor's threads are not seen); a signal is taken between bytecodes, so a sample that falls in a
C call made from Python is charged to the line that made it (the right line), but one that falls in the
event loop's own C code between two callbacks (uvloop, its socket reads, epoll) is charged to the first
line of the next Python callback (a ``data_received``, a task resuming at its ``await``), and no time
shows as the loop's own; the handler itself costs a few microseconds per sample (about 1 % at the
default 997 Hz). A development tool, not part of the product.
"""

from __future__ import annotations

import argparse
import atexit
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType

_MAX_DEPTH = 128
HZ = 997.0  # samples per second of CPU time: prime, so not in step with a periodic timer


class Sampler:
    def __init__(self, out: Path, hz: float) -> None:
        self.out = out
        self.interval = 1.0 / hz
        self.counts: dict[tuple[str, ...], float] = {}
        self.running = False
        self._last = 0.0
        self._names: dict[tuple[object, int], str] = {}

    def start(self) -> None:
        self.counts.clear()
        self.running = True
        self._last = time.thread_time()
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        if self.running:
            self.running = False
            self.write()

    def write(self) -> None:
        lines = [f"{';'.join(stack)} {round(weight)}" for stack, weight in self.counts.items() if weight >= 0.5]
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text("\n".join(lines) + "\n")
        os.replace(partial, self.out)  # whole or not there: a reader may wait for the name

    def sample(self, signum: int, frame: FrameType | None) -> None:
        now = time.thread_time()
        weight_us = (now - self._last) * 1e6
        self._last = now
        if frame is None or weight_us <= 0.0:
            return
        names = self._names
        stack: list[str] = []
        while frame is not None and len(stack) < _MAX_DEPTH:
            code = frame.f_code
            key = (code, frame.f_lineno)
            name = names.get(key)
            if name is None:
                name = names[key] = f"{code.co_name} ({code.co_filename}:{frame.f_lineno})"
            stack.append(name)
            frame = frame.f_back
        stack.reverse()
        whole = tuple(stack)
        self.counts[whole] = self.counts.get(whole, 0.0) + weight_us


def wrapped(args: list[str], out: Path, hz: float = HZ) -> list[str]:
    """``args`` (``python -m MODULE ...``) run under this sampler, writing ``out``."""
    at = args.index("-m")
    return [*args[:at], "-m", "devtools.cpuprof", "--out", str(out), "--hz", str(hz), *args[at:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.cpuprof", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="collapsed stacks, written on SIGUSR2 and at exit")
    p.add_argument("--hz", type=float, default=HZ, help="samples per second of the process's CPU time")
    p.add_argument("--now", action="store_true", help="sample from the start (default: from SIGUSR1)")
    p.add_argument("-m", dest="module", required=True, help="the module to run, as python -m runs it")
    args, rest = p.parse_known_args(argv)
    sampler = Sampler(args.out, args.hz)
    signal.signal(signal.SIGPROF, sampler.sample)
    signal.signal(signal.SIGUSR1, lambda *_: sampler.start())
    signal.signal(signal.SIGUSR2, lambda *_: sampler.stop())
    atexit.register(sampler.stop)
    if args.now:
        sampler.start()
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
