"""``python -m bench.profile``: where the gateway spends its CPU, under load, by py-spy.

    python -m bench.profile --label before          # reports/profile/before/
    python -m bench.profile --label after --seconds 10

Starts a real hub and one gateway (HTTP and gRPC fronts), then for each case drives load at the
gateway and samples it with ``py-spy record --pid`` (a child of this process, stopped by its handle)
for ``--seconds``. Per case it writes, under ``reports/profile/<label>/``:

- ``<case>.raw``: py-spy's collapsed stacks (``frame;frame;... count``);
- ``<case>.svg``: a flame graph of them (rendered here, no other tool needed);
- ``<case>.txt``: the top frames by own time (the leaf) and by total time (on the stack), in
  percent of the samples, plus the gateway's CPU per request over the load's window.

The gateway also runs under ``devtools.cpuprof``, a sampler driven by the CPU time the gateway
spends (``ITIMER_PROF``), started and stopped by signal over the same window. Per case it writes
``<case>.cpu.raw``, ``<case>.cpu.svg`` and ``<case>.cpu.txt``, weighed in microseconds of the loop
thread's CPU. The two differ where the gateway is preempted: py-spy counts a runnable thread as busy,
so on shared cores it charges the lines that wake another process (the write to the hub, the reply)
with time spent waiting for a core. The ``.cpu`` files are where the CPU went; devtools/cpuprof.py
names their limits.

``summary.txt`` holds every case's top frames. Profiles are relative (py-spy pauses the gateway
while it reads a stack); CPU per request comes from /proc, as in ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import LoadSpec, Watch
from devtools import cpuprof, procs
from devtools.devstack import ROOT, Gateway, start_hub

MODEL, SHAPE = "digits", (1, 64)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    front: str  # http | grpc
    encoding: str  # binary | json | msgpack (http); unary | stream (grpc)
    concurrency: int


CASES = (
    Case("http-binary-c1", "http", "binary", 1),
    Case("http-binary-c64", "http", "binary", 64),
    Case("http-json-c64", "http", "json", 64),
    Case("http-msgpack-c64", "http", "msgpack", 64),
    Case("grpc-c1", "grpc", "unary", 1),
    Case("grpc-c64", "grpc", "unary", 64),
    Case("grpc-stream-c64", "grpc", "stream", 64),  # one ModelStreamInfer stream, 64 in flight (make bench's row)
)


def py_spy() -> str:
    """The py-spy binary beside this interpreter (the dev extra installs it), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench.profile: py-spy is not installed (pip install py-spy)")
    return found


# -- collapsed stacks -> top frames and a flame graph -------------------------------------------


def read_stacks(text: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw output (``a;b;c 12`` per line, root first) as stack -> samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(_frame(f) for f in stack.split(";"))] += int(count)
    return stacks


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``; the path's tail is enough to read."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def _function(frame: str) -> str:
    """A frame without its line number: one function's samples add up across its lines."""
    head, sep, _ = frame.rpartition(":")
    return f"{head})" if sep and frame.endswith(")") else frame


def top_frames(stacks: Counter[tuple[str, ...]], n: int = 25, unit: str = "samples") -> str:
    """The ``n`` functions with the most samples (or weight: ``unit``) as the leaf (own) and anywhere on
    the stack (total)."""
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        if not stack:
            continue
        own[_function(stack[-1])] += count
        for fn in {_function(f) for f in stack}:
            inclusive[fn] += count
    lines = [f"{unit}: {total}", "", "own %  function (leaf frame)"]
    lines += [f"{100 * c / total:5.1f}  {fn}" for fn, c in own.most_common(n)]
    lines += ["", "total %  function (anywhere on the stack)"]
    lines += [f"{100 * c / total:7.1f}  {fn}" for fn, c in inclusive.most_common(n)]
    return "\n".join(lines) + "\n"


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1600, row: int = 16) -> str:
    """A flame graph (root at the bottom, width = samples) with each frame's name and share on hover."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    depth = 0
    for stack, count in stacks.items():
        node = tree
        node["n"] += count
        for frame in stack:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
        depth = max(depth, len(stack))
    total = tree["n"] or 1
    height = (depth + 3) * row
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
        f'font-size="11">',
        f'<text x="4" y="{row - 3}">{html.escape(title)} ({total} samples)</text>',
    ]

    def place(node: dict[str, Any], x: float, level: int) -> None:
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                y = height - (level + 1) * row
                hue = 20 + (hash(name.split(" (")[-1]) % 40)
                share = 100 * kid["n"] / total
                label = html.escape(name)
                out.append(
                    f'<g><title>{label} {share:.1f}%</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
                )
                chars = int(w / 7)
                if chars > 3:
                    text = name if len(name) <= chars else name[: chars - 2] + ".."
                    out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
                out.append("</g>")
                place(kid, x, level + 1)
            x += w

    place(tree, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- load --------------------------------------------------------------------------------------


def http_load(url: str, case: Case, warmup_s: float, seconds: float, watch: tuple[Watch, ...]) -> dict[str, Any]:
    from bench.scenarios import run_load

    spec = LoadSpec(
        url=url, model=MODEL, shape=SHAPE, encoding=case.encoding, concurrency=case.concurrency,
        duration_s=seconds, warmup_s=warmup_s, max_s=warmup_s + seconds + 60, watch=watch,
    )  # fmt: skip
    return run_load(spec)


def grpc_load(address: str, case: Case, warmup_s: float, seconds: float, watch: tuple[Watch, ...]) -> dict[str, Any]:
    from bench import grpc_bench

    drive = grpc_bench._stream if case.encoding == "stream" else grpc_bench._concurrent
    return asyncio.run(drive(address, MODEL, case.concurrency, seconds, warmup_s, SHAPE, watch))


def profile_case(
    case: Case,
    pid: int,
    load: Callable[[], dict[str, Any]],
    warmup_s: float,
    seconds: float,
    folder: Path,
    cpu_out: Path | None = None,
) -> str:
    """Run ``load`` in a thread; sample ``pid`` with py-spy over its measured window, and with the CPU-time
    sampler the gateway runs under (``cpu_out``: where it writes, None: it does not); write the case's files."""
    result: dict[str, Any] = {}

    def drive() -> None:
        try:
            result.update(load())
        except Exception as exc:  # reported below, with the profile that was taken
            result["error"] = f"{type(exc).__name__}: {exc}"

    driver = threading.Thread(target=drive, name=f"load-{case.name}")
    driver.start()
    time.sleep(warmup_s)  # the load's own warm-up: the profile covers its measured window only
    raw = folder / f"{case.name}.raw"
    raw.unlink(missing_ok=True)
    args = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "100"]
    args += ["--duration", str(int(seconds)), "--output", str(raw)]
    out, status = "", None
    if cpu_out is not None:
        cpu_out.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)  # devtools.cpuprof: clear and start
    for _ in range(2):  # py-spy now and then fails to read a busy process's first stack: one more try
        spy = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = spy.communicate(timeout=seconds + 60)
        finally:
            status = procs.terminate(spy, timeout_s=10, stop_signal=signal.SIGINT)  # writes what it has
        if raw.exists() or not driver.is_alive():
            break
    cpu_text = ""
    if cpu_out is not None:
        os.kill(pid, signal.SIGUSR2)  # stop and write
        cpu_text = _cpu_profile(case, cpu_out, folder)
    driver.join(timeout=seconds + warmup_s + 120)
    stacks = read_stacks(raw.read_text()) if raw.exists() else Counter()
    cpu = (result.get("cpu_s") or {}).get("gateway")
    ok = result.get("ok") or 0
    per_request = f"{cpu / ok * 1e6:.0f} us" if cpu and ok else "?"
    head = (
        f"case {case.name}: {case.front} {case.encoding} c={case.concurrency}\n"
        f"answered {ok} in the window, {result.get('throughput_rps', float('nan')):.0f} req/s, "
        f"gateway CPU {per_request} per request{'  ERROR ' + result['error'] if 'error' in result else ''}\n"
    )
    if not stacks:
        head += f"py-spy wrote no samples (exit status {status}): {(out or '')[-400:]}\n"
    text = head + top_frames(stacks)
    (folder / f"{case.name}.txt").write_text(text)
    (folder / f"{case.name}.svg").write_text(flame_svg(stacks, f"railgate gateway, {case.name}"))
    if cpu_text:
        (folder / f"{case.name}.cpu.txt").write_text(head + cpu_text)
        text += "\n-- by CPU time (devtools.cpuprof) --\n" + cpu_text
    return text


def _cpu_profile(case: Case, written: Path, folder: Path, timeout_s: float = 30.0) -> str:
    """The CPU-time sampler's stacks for ``case`` (moved from ``written`` once the gateway has written it):
    its .cpu.raw and .cpu.svg, and its top frames (empty if it wrote nothing in ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not written.exists() and time.monotonic() < deadline:  # written by the gateway on SIGUSR2
        time.sleep(0.05)
    if not written.exists():
        return ""
    raw = folder / f"{case.name}.cpu.raw"
    shutil.move(written, raw)
    stacks = read_stacks(raw.read_text())
    title = f"railgate gateway, {case.name}, by CPU time (us of the loop thread)"
    (folder / f"{case.name}.cpu.svg").write_text(flame_svg(stacks, title))
    return top_frames(stacks, unit="us of CPU")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--label", default="before", help="sub-folder of --out (before, after, ...)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "profile")
    p.add_argument("--seconds", type=float, default=8.0, help="sampled seconds per case")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    p.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    args = p.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    cases = [c for c in CASES if not wanted or c.name in wanted]
    if wanted - {c.name for c in cases}:
        p.error(f"unknown case(s) {sorted(wanted - {c.name for c in cases})}; known: {[c.name for c in CASES]}")
    py_spy()
    folder = args.out / args.label
    folder.mkdir(parents=True, exist_ok=True)
    summary = []
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="railgate-profile-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        hub = stack.enter_context(start_hub(args.repository, "profile", models=(MODEL,), grpc=True))
        gateways: dict[str, Gateway] = {}
        cpu_outs: dict[str, Path] = {}  # where each front's gateway writes its CPU-time samples
        for case in cases:
            print(f"profiling {case.name} ...", flush=True)
            gateway = gateways.get(case.front)
            if gateway is None:  # the HTTP cases' gateway has no gRPC front, as in ``make bench``
                config: dict[str, Any] = {"hubs": [{"name": "hub", "url": hub.http_url}], "local": {"enabled": False}}
                if case.front == "grpc":
                    config["listen"] = {"grpc_port": 0}
                gateway = Gateway(workdir, config)
                cpu_outs[case.front] = workdir / f"cpuprof-{case.front}.raw"
                gateway.child.args = cpuprof.wrapped(gateway.child.args, cpu_outs[case.front])
                gateways[case.front] = stack.enter_context(gateway.start(90))
            watch = (Watch("gateway", gateway.pid),)
            if case.front == "http":
                load = lambda c=case, g=gateway, w=watch: http_load(g.url, c, args.warmup, args.seconds, w)  # noqa: E731
            else:
                load = lambda c=case, g=gateway, w=watch: grpc_load(g.grpc_address, c, args.warmup, args.seconds, w)  # noqa: E731
            text = profile_case(case, gateway.pid, load, args.warmup, args.seconds, folder, cpu_outs[case.front])
            print(text.split("\n", 2)[1], flush=True)
            summary.append(text)
    (folder / "summary.txt").write_text(f"git {_commit()}  load {os.getloadavg()}\n\n" + "\n\n".join(summary))
    print(f"profiles: {folder}")
    return 0


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
