"""latency.png: throughput against p99 for every path and load of a report (matplotlib, if installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stats import Spread, spread


def _spread(case: dict[str, Any], key: str) -> Spread | None:
    return spread([r.get(key) for r in case.get("runs", [])])


def plot_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per path and load: throughput and p99 (median with min/max) for latency.png."""
    points = []
    sections = report.get("sections", {})
    for name, section in sections.items():
        for case in section.get("cases", []):
            tput, p99 = _spread(case, "throughput_rps"), _spread(case, "p99_ms")
            if tput is None or p99 is None:
                continue
            path = case.get("path", "gateway")
            label = {
                "overhead": f"c={case['concurrency']} {path}",
                "batching": f"batching {path}",
                "cost": f"cost {case.get('encoding')}",
                "grpc": f"grpc {'stream' if case.get('stream') else 'c=' + str(case['concurrency'])} {path}",
            }[name]
            point = {"section": name, "path": path, "label": label, "throughput": tput, "p99": p99}
            points.append({**point, "encoding": case.get("encoding")})
    return points


LABEL_SIDES = {"direct": (6, -11), "gateway": (6, 5), "nginx": (-6, 5), "binary": (6, 5), "json": (-6, 5)}
LABEL_SIDES["msgpack"] = (6, -11)


def plot(report: dict[str, Any], path: Path) -> str | None:
    """Write latency.png; a reason string instead when it cannot (matplotlib missing, nothing to plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return "matplotlib is not installed: latency.png was not drawn (.venv/bin/pip install matplotlib)"
    points = plot_points(report)
    if not points:
        return "latency.png not drawn: no section produced figures"
    colours = {"direct": "tab:blue", "gateway": "tab:orange", "nginx": "tab:green"}
    markers = {"overhead": "o", "batching": "^", "cost": "D", "grpc": "s"}
    fig, ax = plt.subplots(figsize=(9, 6))
    for p in points:
        x, y = p["throughput"], p["p99"]
        ax.errorbar(
            x.median,
            y.median,
            xerr=[[x.median - x.min], [x.max - x.median]],
            yerr=[[y.median - y.min], [y.max - y.median]],
            fmt=markers[p["section"]],
            color=colours.get(p["path"], "tab:gray"),
            markersize=7,
            capsize=3,
        )
        # Neighbours (direct beside nginx, the three encodings) sit close together: label them on different sides.
        side = LABEL_SIDES.get(p.get("encoding") or p["path"], (6, 5))
        ax.annotate(
            p["label"],
            (x.median, y.median),
            textcoords="offset points",
            xytext=side,
            fontsize=8,
            ha="right" if side[0] < 0 else "left",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("throughput (req/s, median with min and max over runs)")
    ax.set_ylabel("p99 latency (ms)")
    quick = " (quick run)" if report.get("plan", {}).get("quick") else ""
    ax.set_title(f"railgate: throughput vs p99 per path and load{quick}")
    for path_name, colour in colours.items():
        ax.plot([], [], "s", color=colour, label=path_name)
    for section, marker in markers.items():
        ax.plot([], [], marker, color="black", fillstyle="none", label=section)
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
