"""Issue 12 item 14's default run, measured: one real hub on loopback, a gateway, then
``locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 20s``.

Prints the load average, locust's aggregate line, the failures by kind, the backends table, and the
gateway's own queue-wait and backend-latency histograms (its /metrics). Run from the repository root
with ``PYTHONPATH=$PWD .venv/bin/python bench/locust_default.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.devstack import DevStack


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway-nice", type=int, default=None,
                        help="diagnostic: run the gateway's threads at this nice value (e.g. -5; root)")  # fmt: skip
    args = parser.parse_args()
    repo = Path("models/repository").resolve()
    print("load", os.getloadavg())
    with DevStack(repo) as stack:
        hub = stack.hub("h1")
        hubs = [{"name": "h1", "url": f"http://127.0.0.1:{hub.config.http_port}", "region": "west"}]
        gw = stack.gateway({"hubs": hubs})
        if args.gateway_nice is not None:
            _renice(gw.pid, args.gateway_nice)
            print("gateway nice", args.gateway_nice)
        out = Path(tempfile.mkdtemp(prefix="locust-"))
        cmd = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", "20", "-r", "10"]
        cmd += ["-t", "20s", "--host", gw.url, "--csv", str(out / "l"), "--only-summary"]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
    print("load", os.getloadavg())
    print(next((line for line in (p.stdout + p.stderr).splitlines() if "Aggregated" in line), "no aggregate line"))
    with open(out / "l_failures.csv") as f:
        for row in csv.DictReader(f):
            print(f"  {row['Occurrences']:>4} {row['Name']}: {row['Error']}")
    with open(out / "l_backends.csv") as f:
        for row in csv.DictReader(f):
            print("  " + ",".join(row[k] for k in ("Backend", "Model", "Requests", "Failures", "50%", "99%")))
    print("\n".join(_histograms(metrics, ("railgate_queue_wait_seconds", "railgate_backend_latency_seconds"))))
    print("out", out)


if __name__ == "__main__":
    main()
