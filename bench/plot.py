"""Plots for the reports (matplotlib's Agg backend, if installed): latency.png of the benchmark, and helpers.

``pyplot()`` gives matplotlib's pyplot on the Agg backend (no display needed), or None where
matplotlib is missing; ``bar_panels`` draws one bar chart per figure of a table's rows, side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        if name == "tls":  # a table of what TLS adds, not points of its own
            continue
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
                "tracing": f"c={case.get('concurrency')} tracing {case.get('tracing')}",
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
    markers = {"overhead": "o", "batching": "^", "cost": "D", "grpc": "s", "tracing": "v"}
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


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend (writes files, needs no display); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def bar_panels(
    path: Path,
    title: str,
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[float | None]]],
    *,
    log: Sequence[bool] = (),
) -> bool:
    """One bar chart per ``(y label, values)`` over ``labels``, side by side, into ``path``.

    A value of None is drawn as no bar (not measured). False where matplotlib is missing.
    """
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    positions = list(range(len(labels)))
    for i, (ax, (ylabel, values)) in enumerate(zip(axes[0], panels, strict=True)):
        heights = [float("nan") if v is None else float(v) for v in values]
        bars = ax.bar(positions, heights, color="tab:blue")
        ax.bar_label(bars, labels=["-" if v is None else f"{v:.4g}" for v in values], fontsize=7, padding=2)
        ax.set_xticks(positions, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if i < len(log) and log[i]:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def stacked_and_bars(
    path: Path,
    title: str,
    labels: Sequence[str],
    stacks: Sequence[tuple[str, str, Sequence[float]]],
    stack_label: str,
    bars: Sequence[tuple[str, Sequence[float | None]]],
    bar_label: str,
    notes: Sequence[str] = (),
) -> bool:
    """Left: ``stacks`` (name, colour, values) stacked per label, ``notes`` written above them; right:
    ``bars`` (name, values) grouped per label."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    positions = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    for name, colour, values in stacks:
        left.bar(positions, values, bottom=bottom, label=name, color=colour)
        bottom = [b + float(v) for b, v in zip(bottom, values, strict=True)]
    for position, top, note in zip(positions, bottom, notes, strict=False):
        left.annotate(note, (position, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    left.set_ylabel(stack_label)
    width = 0.8 / max(len(bars), 1)
    for i, (name, bar_values) in enumerate(bars):
        heights = [float("nan") if v is None else float(v) for v in bar_values]
        right.bar([p + (i - (len(bars) - 1) / 2) * width for p in positions], heights, width, label=name)
    right.set_ylabel(bar_label)
    for ax in (left, right):
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
