"""``make loadtest``: start the local stack, run locust headless for a bounded time, keep the report.

    python -m loadtests.run                       # local stack, 50 users, 30 s
    python -m loadtests.run --shape spike --shape-scale 0.2
    python -m loadtests.run --host http://staging-gateway:8000 --users 200 --run-time 10m
    python -m loadtests.run --ui                  # same stack, locust's web UI on 127.0.0.1:8089

Without ``--host`` it starts two real Triton hubs, each behind ``railgate link`` (west-near 5 ms
each way over HTTP, dearer; west-far 15 ms over gRPC, cheaper) and the gateway with its local
ONNX Runtime backend, all on loopback, and stops them whatever happens. Everything lands in
``reports/loadtest/<timestamp>/`` (``latest`` points at the newest): locust's report.html and CSVs,
``locust_backends.csv`` and ``locust_routes.csv``, ``summary.md``/``summary.json``, locust's log and
the gateway's /metrics at the end. Any other argument is handed to locust (e.g. ``--tags edge``).

Exit status: 0 when locust ran and no request failed for a reason other than a deadline miss or
shedding (those are what load tests are for); 1 when some did; 2 when the test could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from devtools import procs
from loadtests import shapes, summary
from loadtests.settings import SHAPE_NAMES, SettingsError, read_settings
from railcore.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
REPORTS = ROOT / "reports" / "loadtest"
DEFAULT_RUN_TIME = "30s"
STOP_TIMEOUT_S = 3  # users finish the request in flight when the run ends
PROGRESS_EVERY_S = 5.0  # a progress line (from locust's stats history) this often while it runs
UI_HOST, UI_PORT = "127.0.0.1", 8089


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description="Load-test the gateway with locust (a local stack of real processes unless --host is given).",
        epilog="Other arguments go to locust unchanged, e.g. --tags edge or --exclude-tags vision.",
    )
    parser.add_argument("--host", help="an existing gateway, e.g. http://staging-gateway:8000 (no stack is started)")
    parser.add_argument("--users", type=int, default=50, help="users (with --shape: the peak) [50]")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second [10]")
    parser.add_argument("--run-time", help=f"e.g. 30s, 5m, 1h [{DEFAULT_RUN_TIME}; with --shape: the shape's length]")
    parser.add_argument("--shape", choices=SHAPE_NAMES, default=None, help="load shape [RAILGATE_SHAPE or none]")
    parser.add_argument("--shape-scale", type=float, default=None, help="multiplies the shape's durations [1]")
    parser.add_argument("--ui", action="store_true", help=f"locust's web UI on {UI_HOST}:{UI_PORT} until Ctrl-C")
    parser.add_argument("--out", type=Path, default=REPORTS, help=f"reports folder [{REPORTS.relative_to(ROOT)}]")
    args, extra = parser.parse_known_args(argv)
    if args.users < 1 or args.spawn_rate <= 0:
        parser.error("--users must be >= 1 and --spawn-rate > 0")
    if args.shape_scale is not None and args.shape_scale <= 0:
        parser.error("--shape-scale must be > 0")
    return args, extra


def locust_env(shape: str | None = None, shape_scale: float | None = None) -> dict[str, str]:
    """The environment for a locust process running ``LOCUSTFILE`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if shape is not None:
        env["RAILGATE_SHAPE"] = shape
    if shape_scale is not None:
        env["RAILGATE_SHAPE_SCALE"] = str(shape_scale)
    return env


def locust_command(
    host: str,
    prefix: Path,
    *,
    users: int,
    spawn_rate: float,
    run_time: str | None,
    ui: bool = False,
    extra: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """``python -m locust`` over ``LOCUSTFILE`` writing ``<prefix>_*.csv`` and ``report.html`` beside them."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host]
    cmd += ["--users", str(users), "--spawn-rate", f"{spawn_rate:g}"]
    cmd += ["--csv", str(prefix), "--html", str(prefix.parent / "report.html")]
    cmd += ["--stop-timeout", str(STOP_TIMEOUT_S)]
    if run_time:
        cmd += ["--run-time", run_time]
    if ui:
        cmd += ["--web-host", UI_HOST, "--web-port", str(UI_PORT)]
    else:
        cmd += ["--headless", "--only-summary"]
    return cmd + list(extra)


def seconds(timespan: str) -> float:
    """locust's timespans (``90``, ``30s``, ``5m``, ``1h30m``) in seconds."""
    total, number = 0.0, ""
    for char in timespan.strip():
        if char.isdigit() or char == ".":
            number += char
        elif char in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise ValueError(f"cannot read run time {timespan!r}; expected e.g. 30s, 5m, 1h30m")
    return total + (float(number) if number else 0.0)


def run_folder(base: Path) -> Path:
    """A new ``<base>/<timestamp>`` folder (suffixed if two runs start in the same second)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        folder = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a new run folder under {base}")


def point_latest(folder: Path) -> Path:
    """``<reports>/latest`` -> ``folder`` (a relative symlink, replaced atomically; a copy where links fail)."""
    latest = folder.parent / "latest"
    temporary = folder.parent / f".latest-{os.getpid()}"
    try:
        temporary.symlink_to(folder.name, target_is_directory=True)
        if latest.is_dir() and not latest.is_symlink():
            shutil.rmtree(latest)
        os.replace(temporary, latest)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if latest.is_symlink() or latest.is_file():
            latest.unlink()
        elif latest.is_dir():
            shutil.rmtree(latest)
        shutil.copytree(folder, latest)
    return latest


def fetch(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read()


# -- the local stack --------------------------------------------------------------------------------

STACK_DESCRIPTION = (
    "local stack: west-near (5 ms, http, 0.030/1k), west-far (15 ms, grpc, 0.012/1k), local ONNX Runtime"
)


def start_stack() -> Any:
    """Two real hubs behind links and the gateway with its local backend (``devtools.devstack``)."""
    from devtools.devstack import DevStack, HubPlan

    repository = ROOT / "models" / "repository"
    if not (repository / "manifest.json").is_file():
        print(f"building the model repository in {repository} ...", flush=True)
        from models.build import build_repository

        build_repository(repository)
    plans = [
        HubPlan("west-near", delay_ms=5, price_per_1k=0.030, carbon_g_per_kwh=120),
        HubPlan("west-far", delay_ms=15, price_per_1k=0.012, carbon_g_per_kwh=30, protocol="grpc"),
    ]
    config = {"local": {"enabled": True}, "health": {"probe_interval_s": 1.0}}
    return DevStack.backbone(repository, plans, config)


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    try:
        settings = read_settings(locust_env(args.shape, args.shape_scale))
    except SettingsError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    shape = settings.shape
    run_time = args.run_time
    if run_time is None and not args.ui:
        # A shape ends by itself; the run time is only a bound in case it does not.
        run_time = (
            f"{shapes.duration_s(shape, settings.shape_scale) + 10:.0f}s" if shape != "none" else DEFAULT_RUN_TIME
        )
    try:
        bound_s = seconds(run_time) if run_time else None
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    if args.host:
        try:
            fetch(f"{args.host.rstrip('/')}/v2")
        except (OSError, urllib.error.URLError) as exc:
            print(f"loadtest: the gateway at {args.host} does not answer GET /v2: {exc}", file=sys.stderr)
            return 2
    meta: dict[str, Any] = {
        "started": datetime.now().isoformat(timespec="seconds"),
        "target": args.host or STACK_DESCRIPTION,
        "shape": shape,
        "shape_scale": settings.shape_scale if shape != "none" else None,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time": run_time,
        "locust_args": extra,
        "weights": settings.weights(),
        "edge_budgets_ms": list(settings.edge_budgets_ms),
    }
    stack = None
    code: int | None = None
    try:
        if args.host:
            host = args.host.rstrip("/")
        else:
            print(f"starting the {STACK_DESCRIPTION} ...", flush=True)
            t0 = time.monotonic()
            try:
                stack = start_stack()
            except Exception as exc:  # StartError, HubError: the message names the process and what it said
                print(f"loadtest: the local stack did not start: {exc}", file=sys.stderr)
                return 2
            host = stack.gateway_url
            print(f"stack ready in {time.monotonic() - t0:.1f}s: gateway {host}", flush=True)
        folder = run_folder(args.out)
        prefix = folder / "locust"
        cmd = locust_command(
            host, prefix, users=args.users, spawn_rate=args.spawn_rate, run_time=run_time, ui=args.ui, extra=extra
        )
        env = locust_env(args.shape, args.shape_scale)
        if args.ui:
            print(f"locust web UI on http://{UI_HOST}:{UI_PORT} (target {host}); Ctrl-C stops everything", flush=True)
            code = _run_ui(cmd, env)
        else:
            what = f"shape {shape} (scale {settings.shape_scale:g})" if shape != "none" else f"{args.users} users"
            print(f"locust: {what}, {run_time}, log {folder / 'locust.log'} ...", flush=True)
            code = _run_headless(cmd, env, folder / "locust.log", bound_s or 0.0, prefix)
        with contextlib.suppress(OSError, urllib.error.URLError):
            (folder / "gateway_metrics.txt").write_bytes(fetch(f"{host}/metrics"))
    finally:
        if stack is not None:
            stack.close()
            print("local stack stopped", flush=True)
    return _report(folder, prefix, meta, code)


def _run_headless(cmd: list[str], env: dict[str, str], log: Path, run_s: float, prefix: Path) -> int | None:
    """locust's exit code, or None when it overran its bound and was stopped; progress to stderr meanwhile."""
    with log.open("wb") as out:
        proc = procs.spawn(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    progress = Progress("loadtest", round(run_s) or None, pace=1.0)  # steps: seconds of locust's run
    try:
        return _wait_locust(proc, run_s + STOP_TIMEOUT_S + 60, grace_s=15, tick=lambda: _tick(progress, prefix))
    finally:
        progress.close()


def progress_note(rows: list[dict[str, float]]) -> str:
    """What the progress line says of locust's latest stats-history row."""
    if not rows:
        return "locust starting"
    r = rows[-1]
    p99 = "-" if r["99%"] != r["99%"] else f"{r['99%']:g} ms"  # NaN: no request in the window yet
    return f"{r['users']:.0f} users, {r['requests']:.0f} requests, {r['failures']:.0f} failures, {r['rps']:.0f} req/s, p99 {p99}"


def _tick(progress: Progress, prefix: Path) -> None:
    rows = summary.history(prefix)
    done = round(rows[-1]["t_s"]) if rows else 0
    progress.update(min(done, progress.total) if progress.total else done, progress_note(rows))


def _run_ui(cmd: list[str], env: dict[str, str]) -> int | None:
    return _wait_locust(procs.spawn(cmd, env=env), None, grace_s=30)


def _wait_locust(
    proc: subprocess.Popen[bytes], timeout_s: float | None, grace_s: float, tick: Any = None
) -> int | None:
    """Wait for locust (at most ``timeout_s``), calling ``tick`` every ``PROGRESS_EVERY_S``; on Ctrl-C
    pass it on, so it stops and writes its reports."""
    try:
        if tick is None:
            return proc.wait(timeout=timeout_s)
        until = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            step = PROGRESS_EVERY_S if until is None else min(PROGRESS_EVERY_S, max(until - time.monotonic(), 0.0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(timeout=step)
            if until is not None and time.monotonic() >= until:
                raise subprocess.TimeoutExpired(proc.args, timeout_s or 0.0)
            tick()
    except KeyboardInterrupt:  # locust runs in a session of its own: the terminal's Ctrl-C reached only us
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=grace_s)
        return procs.terminate(proc, timeout_s=0)
    except subprocess.TimeoutExpired:
        procs.terminate(proc)
        return None
    finally:
        procs.terminate(proc, timeout_s=0)  # nothing it started outlives it


def _report(folder: Path, prefix: Path, meta: dict[str, Any], code: int | None) -> int:
    meta["locust_exit_code"] = code
    if not Path(f"{prefix}_stats.csv").is_file():
        print(f"loadtest: locust wrote no statistics (exit code {code}); see {folder / 'locust.log'}", file=sys.stderr)
        _print_log_tail(folder / "locust.log")
        return 2
    result = summary.build(prefix, meta)
    if summary.plot(prefix, folder / "loadtest.png"):
        result["plot"] = "loadtest.png"
    (folder / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    text = summary.markdown(result)
    (folder / "summary.md").write_text(text)
    latest = point_latest(folder)
    print()
    print(text)
    print(f"report: {folder} (also {latest})")
    if code not in (0, 1):  # locust exits 1 when any request failed; anything else is locust failing
        print(f"loadtest: locust exited with {code}; see {folder / 'locust.log'}", file=sys.stderr)
        _print_log_tail(folder / "locust.log")
        return 2
    return 1 if result["errors"] or result["uncounted_failures"] else 0


def _print_log_tail(log: Path, lines: int = 15) -> None:
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines()[-lines:]:
            print(f"  {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
