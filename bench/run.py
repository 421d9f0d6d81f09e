"""``python -m bench.run``: start a real hub, run the benchmarks, write reports/bench/<timestamp>/.

    python -m bench.run                      # everything, 3 runs per case (a few minutes)
    python -m bench.run --quick              # durations and counts cut ~10x: a smoke run
    python -m bench.run --only overhead,cost --runs 5

nginx is the anchor the gateway's overhead is compared against: ``make bench`` installs it
(nginx-light) where it can. Without it the run prints a MISSING row, and under ``CI=true`` it fails.

Every process it starts (hub, gateways, link, nginx, load generators) is stopped before it exits,
on success, on an error and on Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import procstat
from bench.report import markdown, write_report
from bench.scenarios import SECTIONS, Bench, Plan
from devtools.devstack import ROOT, Hub, StartError, nginx_binary, nginx_version, start_hub
from railcore.progress import Progress

PACKAGES = ("aiohttp", "uvloop", "numpy", "msgpack", "tritonclient", "nvidia-pytriton", "onnxruntime", "matplotlib")


def _sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(SECTIONS)} (comma-separated), got {text!r}")
    return [n for n in SECTIONS if n in names]  # always in report order


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="railgate benchmarks (see bench/__init__.py)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of every case (default 3)")
    p.add_argument("--quick", action="store_true", help="cut durations and counts ~10x (smoke run)")
    p.add_argument("--only", type=_sections, default=list(SECTIONS), metavar="|".join(SECTIONS))
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench", help="reports folder")
    p.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    return p


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    nginx = nginx_binary()
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "idle_policy": procstat.idle_policy(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "nginx": nginx_version(nginx) if nginx else None,
        "nginx_binary": nginx,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git_commit": commit,
    }


MISSING_NGINX = "MISSING nginx (install nginx-light)"


def anchor_rows(nginx: str | None) -> list[str]:
    """The report rows for anchors that could not be measured on this machine (none when all are there)."""
    return [] if nginx else [f"{MISSING_NGINX}: the nginx anchor rows are not measured"]


def _stop_on_signal(signum: int, frame: Any) -> None:
    """First SIGINT/SIGTERM: unwind (every ``finally`` stops its processes). Later ones are ignored,
    so a second Ctrl-C cannot cut the clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _ensure_repository(repository: Path) -> None:
    if not (repository / "manifest.json").is_file():
        print(f"building the model repository at {repository} (make models) ...", flush=True)
        from models.build import build_repository

        build_repository(repository)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        print("bench.run: --runs must be >= 1", file=sys.stderr)
        return 2
    plan = Plan.make(args.runs, args.quick)
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "argv": sys.argv[1:] if argv is None else argv,
        "plan": plan.as_dict(),
        "machine": machine_info(),
        "notes": [],
        "sections": {},
    }
    nginx = report["machine"]["nginx_binary"]
    missing = anchor_rows(nginx)
    for row in missing:
        print(row, flush=True)
    report["notes"] += missing
    if missing and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        print("bench.run: CI=true and an anchor is missing: refusing to run without it", file=sys.stderr)
        return 1
    if plan.quick:
        report["notes"].append("Quick run: durations and counts are ~10x shorter than a full run; figures are noisy.")
    say = lambda text: print(text, flush=True)  # noqa: E731
    status = 0
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = contextlib.ExitStack()
    try:
        _ensure_repository(args.repository)
        workdir = Path(tempfile.mkdtemp(prefix="railgate-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        say(f"starting a real Triton hub ({plan.model}) ...")
        t0 = time.monotonic()

        def bench_hub() -> Hub:
            return stack.enter_context(start_hub(args.repository, "bench", models=(plan.model,), grpc=True))

        hub = bench_hub()
        say(f"hub ready at {hub.http_url} in {time.monotonic() - t0:.1f} s")
        bench = Bench(plan, hub, workdir, nginx, say)
        progress = Progress("bench", len(args.only))  # a line per section, to stderr
        for name in args.only:
            child = bench.hub.child
            if child is not None and not child.running:  # one section's crash must not fail all after it
                died = child.last_output(3)
                say(f"the hub died before section {name}; starting another. Its last output: {died}")
                report["notes"].append(f"The hub died before section {name} and a new one served it: {died[-300:]}")
                bench.hub = bench_hub()
            progress.phase(f"section {name} ...")
            section: dict[str, Any] = {"cases": []}
            report["sections"][name] = section
            try:
                SECTIONS[name](bench, section)
            except Exception as exc:  # one failed section must not cost the others (or the report)
                if not isinstance(exc, StartError):
                    traceback.print_exc()
                say(f"{name} failed: {exc}")
                section["error"] = f"{type(exc).__name__}: {exc}"
                status = 1
            progress.step(f"{name} {'failed' if 'error' in section else 'done'}, {len(section['cases'])} cases")
        progress.done()
    except KeyboardInterrupt:
        say("interrupted: stopping every process ...")
        report["notes"].append("Interrupted before the end: the sections below are partial.")
        status = 130
    except StartError as exc:
        say(f"bench.run: {exc}")
        report["notes"].append(f"Could not start: {exc}")
        status = 1
    finally:
        with contextlib.suppress(ValueError):  # ignore signals while clean-up runs
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    report["finished"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    folder = write_report(report, args.out, started.strftime("%Y%m%d-%H%M%S"))
    print()
    print(markdown(report))
    say(f"reports: {folder} (and {args.out / 'latest'})")
    return status


if __name__ == "__main__":
    sys.exit(main())
