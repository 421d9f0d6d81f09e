"""``summary.json`` and ``summary.md`` from a run's CSVs: locust's own and the per-backend/route ones.

Pure: reads the files under one CSV prefix and returns a dict; ``markdown`` renders it.
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
    }
    return summary


_LATE = re.compile(r"^deadline miss: (\d+) ms > budget (\S+) ms$")


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
    lines += ["", "Latencies in ms, measured by the load generator (they include its own scheduling delay).", ""]
    return "\n".join(lines)
