"""``summary.json``, ``summary.md`` and ``loadtest.png`` from a run's CSVs: locust's own and the per-backend/route ones.

``build`` reads the files under one CSV prefix and returns a dict; ``markdown`` renders it;
``history`` reads locust's stats history (one aggregated row a second) and ``plot`` draws it:
latency percentiles and requests per second over the run.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "N/A") else 0.0
    except ValueError:
        return 0.0


def _latency(row: dict[str, str], *, locust: bool) -> dict[str, float]:
    average = "Average Response Time" if locust else "Average (ms)"
    maximum = "Max Response Time" if locust else "Max (ms)"
    return {
        "avg_ms": round(_num(row.get(average)), 2),
        "p50_ms": _num(row.get("50%")),
        "p95_ms": _num(row.get("95%")),
        "p99_ms": _num(row.get("99%")),
        "max_ms": round(_num(row.get(maximum)), 2),
    }


def build(prefix: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run summed up: totals, per request name, per backend, per route reason, top failures."""
    stats = _rows(Path(f"{prefix}_stats.csv"))
    aggregated = next((r for r in stats if r.get("Name") == "Aggregated"), {})
    backends_csv = _rows(Path(f"{prefix}_backends.csv"))
    backend_totals = [r for r in backends_csv if r.get("Model") == "All"]
    kinds = {
        "deadline_misses": sum(int(_num(r.get("Deadline misses"))) for r in backend_totals),
        "overload": sum(int(_num(r.get("Overload"))) for r in backend_totals),
        "errors": sum(int(_num(r.get("Errors"))) for r in backend_totals),
    }
    requests = int(_num(aggregated.get("Request Count")))
    failures = int(_num(aggregated.get("Failure Count")))
    summary: dict[str, Any] = {
        **(meta or {}),
        "requests": requests,
        "failures": failures,
        "failure_ratio": round(failures / requests, 4) if requests else 0.0,
        **kinds,
        # Requests locust saw fail that the per-backend tally did not count (non-inference requests).
        "uncounted_failures": max(0, failures - sum(kinds.values())),
        "throughput_rps": round(_num(aggregated.get("Requests/s")), 2),
        **_latency(aggregated, locust=True),
        "endpoints": [
            {
                "type": r["Type"],
                "name": r["Name"],
                "requests": int(_num(r["Request Count"])),
                "failures": int(_num(r["Failure Count"])),
                "rps": round(_num(r["Requests/s"]), 2),
                **_latency(r, locust=True),
            }
            for r in stats
            if r.get("Name") != "Aggregated"
        ],
        "backends": [
            {
                "backend": r["Backend"],
                "requests": int(_num(r["Requests"])),
                "share_pct": _num(r["Share %"]),
                "failures": int(_num(r["Failures"])),
                "deadline_misses": int(_num(r["Deadline misses"])),
                "mean_batch_size": _num(r["Mean batch size"]) or None,
                **_latency(r, locust=False),
            }
            for r in backend_totals
        ],
        "routes": [
            {
                "route_reason": r["Route reason"],
                "requests": int(_num(r["Requests"])),
                "share_pct": _num(r["Share %"]),
                "backends": r["Backends"],
                "failures": int(_num(r["Failures"])),
                **_latency(r, locust=False),
            }
            for r in _rows(Path(f"{prefix}_routes.csv"))
        ],
        "top_failures": top_failures(_rows(Path(f"{prefix}_failures.csv"))),
        # The gateway's own time and the load generator's, apart from the outcomes (loadtests/stats.py).
        "lateness": [
            {"measure": r["Measure"], "samples": int(_num(r["Samples"])), **_latency(r, locust=False)}
            for r in _rows(Path(f"{prefix}_lateness.csv"))
        ],
    }
    return summary


HISTORY_PERCENTILES = ("50%", "95%", "99%")


def history(prefix: Path) -> list[dict[str, float]]:
    """locust's ``<prefix>_stats_history.csv``, aggregated rows only, as numbers (``N/A`` is NaN).

    Each row: ``t_s`` (seconds since the first row), ``users``, ``rps``, ``failures_per_s``,
    ``requests`` and ``failures`` (totals so far) and the percentiles of ``HISTORY_PERCENTILES``
    (locust's percentiles over the last ten seconds, in ms). A file still being written may end in a
    half line: it is skipped.
    """
    rows = []
    for r in _rows(Path(f"{prefix}_stats_history.csv")):
        if r.get("Name") != "Aggregated" or not r.get("Timestamp", "").isdigit():
            continue
        if r.get("Total Average Content Size") is None:  # a half-written last line
            continue
        row = {
            "timestamp": float(r["Timestamp"]),
            "users": _num(r.get("User Count")),
            "rps": _num(r.get("Requests/s")),
            "failures_per_s": _num(r.get("Failures/s")),
            "requests": _num(r.get("Total Request Count")),
            "failures": _num(r.get("Total Failure Count")),
        }
        for key in HISTORY_PERCENTILES:
            value = r.get(key)
            row[key] = float("nan") if value in (None, "", "N/A") else _num(value)
        rows.append(row)
    for row in rows:
        row["t_s"] = row["timestamp"] - rows[0]["timestamp"]
    return rows


def plot(prefix: Path, path: Path) -> bool:
    """loadtest.png: latency percentiles (top) and requests/s with failures/s and users (bottom) over the run.

    False when there is nothing to draw (no history rows) or matplotlib is missing.
    """
    from bench.plot import pyplot

    rows = history(prefix)
    plt = pyplot()
    if plt is None or not rows:
        return False
    t = [r["t_s"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key in HISTORY_PERCENTILES:
        top.plot(t, [r[key] for r in rows], label=f"p{key.rstrip('%')}")
    top.set_ylabel("latency (ms, last 10 s)")
    top.set_title("Load test: latency percentiles and throughput over time")
    top.legend(fontsize=8)
    bottom.plot(t, [r["rps"] for r in rows], label="requests/s", color="tab:blue")
    bottom.plot(t, [r["failures_per_s"] for r in rows], label="failures/s", color="tab:red")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("seconds since the start")
    users = bottom.twinx()
    users.plot(t, [r["users"] for r in rows], label="users", color="tab:gray", linestyle="--")
    users.set_ylabel("users")
    lines = bottom.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    bottom.legend(lines, [str(line.get_label()) for line in lines], fontsize=8, loc="upper left")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


_LATE = re.compile(r"^deadline miss: (?:the gateway took )?(\d+) ms > budget (\S+) ms$")


def top_failures(rows: list[dict[str, str]], limit: int = 10) -> list[dict[str, Any]]:
    """locust's failures, most frequent first, with late replies folded into one line per budget.

    locust keeps one row per distinct message, so "deadline miss: 12 ms > budget 10 ms" and "... 13 ms
    ..." are separate rows; here they become "deadline miss: over budget 10 ms (worst 13 ms)".
    """
    folded: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        error, worst = r["Error"], None
        late = _LATE.match(error)
        if late:
            error, worst = f"deadline miss: over budget {late[2]} ms", int(late[1])
        entry = folded.setdefault(
            (r["Method"], r["Name"], error), {"type": r["Method"], "name": r["Name"], "error": error, "occurrences": 0}
        )
        entry["occurrences"] += int(_num(r["Occurrences"]))
        if worst is not None:
            entry["worst_ms"] = max(worst, entry.get("worst_ms", 0))
    ranked = sorted(folded.values(), key=lambda e: (-e["occurrences"], e["name"], e["error"]))[:limit]
    for entry in ranked:
        if "worst_ms" in entry:
            entry["error"] += f" (worst {entry.pop('worst_ms')} ms)"
    return ranked


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def _percentiles(row: dict[str, Any]) -> list[float]:
    return [row["p50_ms"], row["p95_ms"], row["p99_ms"]]


def markdown(summary: dict[str, Any]) -> str:
    s = summary
    lines = [f"# Load test {s.get('started', '')}".rstrip(), ""]
    setup = [f"{k}: `{s[k]}`" for k in ("target", "shape", "users", "spawn_rate", "run_time") if s.get(k) is not None]
    if setup:
        lines += ["; ".join(setup), ""]
    lines += [
        f"**{s['requests']} requests, {s['throughput_rps']} req/s; "
        f"p50 {s['p50_ms']:g} ms, p95 {s['p95_ms']:g} ms, p99 {s['p99_ms']:g} ms; "
        f"{s['failures']} failures ({100 * s['failure_ratio']:.2f} %)**: "
        f"{s['deadline_misses']} deadline misses, {s['overload']} shed (429/503), {s['errors']} errors.",
        "",
        "## Per backend (X-Served-By)",
        "",
    ]
    lines += _table(
        ["backend", "requests", "share %", "failures", "deadline misses", "mean batch", "p50", "p95", "p99"],
        [
            [
                b["backend"],
                b["requests"],
                b["share_pct"],
                b["failures"],
                b["deadline_misses"],
                b["mean_batch_size"] or "",
                *_percentiles(b),
            ]
            for b in s["backends"]
        ],
    )
    lines += ["", "## Per route reason (X-Route-Reason)", ""]
    lines += _table(
        ["route reason", "requests", "share %", "backends", "failures", "p50", "p95", "p99"],
        [
            [r["route_reason"], r["requests"], r["share_pct"], r["backends"], r["failures"], *_percentiles(r)]
            for r in s["routes"]
        ],
    )
    lines += ["", "## Per request", ""]
    lines += _table(
        ["type", "name", "requests", "failures", "req/s", "p50", "p95", "p99"],
        [[e["type"], e["name"], e["requests"], e["failures"], e["rps"], *_percentiles(e)] for e in s["endpoints"]],
    )
    if s["top_failures"]:
        lines += ["", "## Most frequent failures", ""]
        lines += _table(
            ["occurrences", "request", "error"],
            [[f["occurrences"], f"{f['type']} {f['name']}", f["error"]] for f in s["top_failures"]],
        )
    if any(r["samples"] for r in s.get("lateness", [])):
        lines += ["", "## Gateway's time and the load generator's (not failures)", ""]
        lines += _table(
            ["measure", "samples", "p50", "p95", "p99", "max"],
            [[r["measure"], r["samples"], *_percentiles(r), r["max_ms"]] for r in s["lateness"] if r["samples"]],
        )
    if s.get("plot"):
        lines += ["", "## Over time", "", f"![latency percentiles and requests per second over time]({s['plot']})"]
    lines += ["", "Latencies in ms, measured by the load generator (they include its own scheduling delay).", ""]
    return "\n".join(lines)
