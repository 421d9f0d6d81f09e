"""Issue 12 item 14's default run, measured: one real hub on loopback, a gateway, then
``locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 20s``.

Prints the load average, locust's aggregate line, the failures by kind, the backends table, and the
gateway's own queue-wait and backend-latency histograms (its /metrics). Then the host's steal time
(the hypervisor running others while this VM's cores wanted to run: a stall no process here can see
or avoid) over the run and over an idle stretch before it, and each failed request with the gateway's
own split of its time (``X-Queue-Ms``, ``X-Backend-Ms``, ``X-Gateway-Ms``) and the steal during it.
``--runs N`` repeats it, each on a fresh stack, and ends with one line per run. Run from the
repository root with ``PYTHONPATH=$PWD .venv/bin/python bench/locust_default.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from bisect import bisect_left, bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import procstat
from devtools.devstack import DevStack

IDLE_S = 5.0  # the idle stretch before each run whose steal is the baseline


class StealLog:
    """The host's steal time, sampled every 10 ms with its wall-clock time, while the block runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (unix s, steal s summed over cores)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            steal = procstat.steal_s()
            if steal is None:
                return
            self.samples.append((time.time(), steal[0]))
            self._stop.wait(0.01)

    def __enter__(self) -> StealLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def during_ms(self, start: float, end: float) -> float | None:
        """Steal (ms, all cores) between the last sample before ``start`` and the first after ``end``:
        at the kernel's 10 ms tick granularity, so a short window reads 0 or a whole tick."""
        times = [t for t, _ in self.samples]
        i, j = bisect_right(times, start) - 1, bisect_left(times, end)
        if i < 0 or j >= len(times):
            return None
        return (self.samples[j][1] - self.samples[i][1]) * 1000


def _histograms(text: str, names: tuple[str, ...]) -> list[str]:
    """``name{labels} le=... count`` lines as ``labels: p50~ p99~ (count)`` from cumulative buckets."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + "_bucket{"):
                labels, value = line[len(name) + 8 :].rsplit("} ", 1)
                parts = dict(p.split("=", 1) for p in labels.split(","))
                le = parts.pop("le").strip('"')
                key = (name, ",".join(f"{k}={v.strip(chr(34))}" for k, v in parts.items()))
                series.setdefault(key, []).append((float(le), float(value)))
    out = []
    for (name, labels), buckets in sorted(series.items()):
        total = buckets[-1][1]
        if not total:
            continue

        def q(p: float, buckets: list[tuple[float, float]] = buckets, total: float = total) -> str:
            return next(f"<={le * 1000:g}ms" for le, c in buckets if c >= p * total)

        out.append(f"  {name.removeprefix('railgate_')} {labels}: n={total:g} p50 {q(0.5)} p99 {q(0.99)}")
    return out


def _renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` at ``nice`` (Linux's nice is per thread): a diagnostic of how much of what
    is left is the gateway waiting for a core it shares with locust and the hub (lowering needs root)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def _steal_share(start: tuple[float, int] | None, end: tuple[float, int] | None, wall_s: float) -> str:
    if start is None or end is None:
        return "unknown (no /proc/stat)"
    return f"{100 * (end[0] - start[0]) / (wall_s * end[1]):.1f}% of each core"


def _failed_lines(path: Path, steal: StealLog) -> list[str]:
    """Each failed request: what it was, the gateway's split of its time, the host's steal during it."""
    if not path.is_file():
        return ["  (no _failed.csv: an older locustfile)"]
    lines = []
    with open(path) as f:
        for row in csv.DictReader(f):
            end, client_ms = float(row["End (unix s)"]), float(row["Client ms"])
            stolen = steal.during_ms(end - client_ms / 1000, end)
            split = " ".join(
                f"{k[2:-3].lower()}={row[k] or '-'}" for k in ("X-Queue-Ms", "X-Backend-Ms", "X-Gateway-Ms")
            )
            lines.append(
                f"  {row['Name']}: {row['Error']} | client {client_ms:g} ms, {split} ms, "
                f"by {row['X-Served-By'] or '-'} | host steal during it: "
                f"{'?' if stolen is None else f'{stolen:g} ms'}"
            )
    return lines


def run_once(repo: Path, gateway_nice: int | None) -> tuple[int, int, str, str]:
    """One default run on a fresh stack: (failures, requests, steal during the run, steal idle)."""
    print("load", os.getloadavg())
    with DevStack(repo) as stack, StealLog() as steal:
        hub = stack.hub("h1")
        hubs = [{"name": "h1", "url": f"http://127.0.0.1:{hub.config.http_port}", "region": "west"}]
        gw = stack.gateway({"hubs": hubs})
        if gateway_nice is not None:
            _renice(gw.pid, gateway_nice)
            print("gateway nice", gateway_nice)
        idle_start = procstat.steal_s()
        time.sleep(IDLE_S)  # a measurement window, not a synchronisation: the idle baseline
        idle = _steal_share(idle_start, procstat.steal_s(), IDLE_S)
        out = Path(tempfile.mkdtemp(prefix="locust-"))
        cmd = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", "20", "-r", "10"]
        cmd += ["-t", "20s", "--host", gw.url, "--csv", str(out / "l"), "--only-summary"]
        run_start, began = procstat.steal_s(), time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        during = _steal_share(run_start, procstat.steal_s(), time.monotonic() - began)
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
    print("load", os.getloadavg())
    aggregate = next((line for line in (p.stdout + p.stderr).splitlines() if "Aggregated" in line), "")
    print(aggregate or "no aggregate line")
    with open(out / "l_failures.csv") as f:
        for row in csv.DictReader(f):
            print(f"  {row['Occurrences']:>4} {row['Name']}: {row['Error']}")
    with open(out / "l_backends.csv") as f:
        for row in csv.DictReader(f):
            print("  " + ",".join(row[k] for k in ("Backend", "Model", "Requests", "Failures", "50%", "99%")))
    print("\n".join(_histograms(metrics, ("railgate_queue_wait_seconds", "railgate_backend_latency_seconds"))))
    raced = [line for line in metrics.splitlines() if line.startswith("railgate_hedges_total{")]
    print("hedges and local rescues (railgate_hedges_total):", ", ".join(raced) or "none")
    print(f"host steal: {during} during the run, {idle} in the {IDLE_S:g} s idle before it")
    print("failed requests:")
    print("\n".join(_failed_lines(out / "l_failed.csv", steal)) or "  none")
    print("out", out)
    with open(out / "l_stats.csv") as f:
        total = next((r for r in csv.DictReader(f) if r["Name"] == "Aggregated"), None)
    if total is None:
        return -1, 0, during, idle
    return int(total["Failure Count"]), int(total["Request Count"]), during, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat the run, each on a fresh stack (default 1)")
    parser.add_argument("--gateway-nice", type=int, default=None,
                        help="diagnostic: run the gateway's threads at this nice value (e.g. -5; root)")  # fmt: skip
    args = parser.parse_args()
    repo = Path("models/repository").resolve()
    print("idle cores:", procstat.idle_policy() or "unknown (no cpuidle in sysfs)")
    results = [run_once(repo, args.gateway_nice) for _ in range(args.runs)]
    if args.runs > 1:
        print("\nruns (failures of requests; host steal during the run / idle before it):")
        for i, (failures, requests, during, idle) in enumerate(results, 1):
            print(f"  {i}: {failures} of {requests}; steal {during} / {idle}")
        counts = sorted(r[0] for r in results)
        print(f"  median failures {counts[len(counts) // 2]}")


if __name__ == "__main__":
    main()
