"""The simulator's report: a Markdown table, the targets, and a cost-vs-SLO plot."""

from __future__ import annotations

from pathlib import Path

from bench.plot import bar_panels, pyplot
from bench.sim.run import BASELINES

Row = dict[str, object]

LEGEND = """\
Every policy row is the production `Pipeline`, `Forwarder`, `Router`, breakers and retry budget on a
virtual-time event loop; only the hubs are simulated. `nearest-only` and `cheapest-only` are the same
pipeline and forwarder with a router that always picks the nearest (or cheapest, by list price)
allowed hub, blind to budget, load and health. `clairvoyant` is computed, not run: each request alone
on the cheapest allowed hub whose realised latency (its own sampled noise, the outages, the slowdown)
met its budget, at the lowest price its answer could have been billed at. *cost / clairvoyant* is
what a policy paid over what the clairvoyant pays for the very requests that policy answered in
time (at least 1 by construction); *cost / 1k* is per request answered in time. Residency breaches
are counted by the hubs, from the request ids each batch carries."""


def markdown(results: list[Row]) -> str:
    lines = [
        "| policy | SLO attainment | cost / 1k | cost / clairvoyant | p50 ms | p99 ms | errors+late | lost "
        "| residency breaches | wall s | CPU s | requests / CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['policy']} | {100 * r['slo_attainment']:.3f}% | {r['cost_per_1k']:.5f} | "  # type: ignore[operator]
            f"{_f(r['cost_ratio'], '.3f')} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r['errors_or_late']} | "
            f"{r['lost']} | {r['residency_breaches']} | {r['wall_s']} | {r['cpu_s']} | {_f(r['requests_per_s'], '.0f')} |"
        )
    return "\n".join(lines)


def _f(value: object, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def targets(results: list[Row]) -> str:
    by = {r["policy"]: r for r in results}
    lines = []
    if "cheapest" in by and "cheapest-only" in by:
        c, base = by["cheapest"], by["cheapest-only"]
        slo = c["slo_attainment"] >= 0.995  # type: ignore[operator]
        ratio = c["cost_per_1k"] / base["cost_per_1k"]  # type: ignore[operator]
        lines.append(f"- cheapest SLO attainment {100 * c['slo_attainment']:.3f}% (target >= 99.5%): "  # type: ignore[operator]
                     f"{'met' if slo else 'MISSED'}")  # fmt: skip
        lines.append(f"- cheapest cost / cheapest-only cost = {ratio:.3f} (target <= 1.10): "
                     f"{'met' if ratio <= 1.10 else 'MISSED'}")  # fmt: skip
    if "nearest" in by:
        n = by["nearest"]
        hub_p99: dict[str, float] = n["hub_p99_ms"]  # type: ignore[assignment]
        share: dict[str, float] = n["hub_share"]  # type: ignore[assignment]
        busy = [h for h in hub_p99 if share.get(h, 0) >= 0.01]
        if busy and n["unrestricted_p99_ms"] is not None:
            best = min(busy, key=lambda h: hub_p99[h])
            ratio = n["unrestricted_p99_ms"] / hub_p99[best]  # type: ignore[operator]
            lines.append(f"- nearest p99 (requests without residency) {n['unrestricted_p99_ms']:.1f} ms vs best "
                         f"hub's own p99 ({best}) {hub_p99[best]:.1f} ms = "
                         f"{ratio:.3f} (target <= 1.05): {'met' if ratio <= 1.05 else 'MISSED'}")  # fmt: skip
    policies = [r for r in results if r["policy"] != "clairvoyant"]
    breaches = sum(r["residency_breaches"] for r in policies if r["policy"] not in BASELINES)  # type: ignore[misc]
    lost = sum(r["lost"] for r in policies)  # type: ignore[misc]
    lines.append(
        f"- residency breaches by railgate policies: {breaches} (target 0): {'met' if breaches == 0 else 'MISSED'}"
    )
    lines.append(f"- requests lost, all runs: {lost} (target 0): {'met' if lost == 0 else 'MISSED'}")
    if "clairvoyant" in by:
        below = [r["policy"] for r in policies if r["cost_ratio"] is not None and r["cost_ratio"] < 1]  # type: ignore[operator]
        beyond = sum(r["beyond_oracle"] for r in policies)  # type: ignore[misc]
        lines.append(
            f"- policies below the clairvoyant's cost: {', '.join(map(str, below)) or 'none'}; requests answered in "
            f"time that no hub could have answered: {beyond} (target: none and 0)"
        )
    return "\n".join(lines)


def plot(results: list[Row], path: Path) -> bool:
    """sim.png: each policy's cost over the clairvoyant's against its SLO misses (False: no matplotlib)."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    # Misses on a log scale: the policies worth comparing miss 0.02-2 %, the baselines up to 90 %.
    shown = sorted((r for r in results if r["cost_ratio"] is not None), key=lambda r: float(r["cost_ratio"]))  # type: ignore[arg-type]
    for i, r in enumerate(shown):  # neighbours along x take turns above and below their point
        ratio, missed = float(r["cost_ratio"]), 100 * (1 - float(r["slo_attainment"]))  # type: ignore[arg-type]
        star = r["policy"] == "clairvoyant"
        ax.scatter(ratio, missed, s=120 if star else 60, marker="*" if star else "o", zorder=3)
        ax.annotate(str(r["policy"]), (ratio, missed), xytext=(6, 8 if i % 2 else -12), textcoords="offset points")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("cost over the clairvoyant's, for the requests the policy answered in time")
    ax.set_ylabel("requests not answered in time (%)")
    ax.set_title("Routing policies: cost vs SLO misses (simulated, production pipeline)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_policies(results: list[Row], path: Path) -> bool:
    """sim_policies.png: SLO attainment, cost per 1,000 answered in time and p99, a bar per policy."""
    labels = [str(r["policy"]) for r in results]
    return bar_panels(
        path,
        "Routing policies (simulated, production pipeline)",
        labels,
        [
            ("SLO attainment (%)", [100 * float(r["slo_attainment"]) for r in results]),  # type: ignore[arg-type]
            ("cost per 1,000 answered in time", [_float(r["cost_per_1k"]) for r in results]),
            ("p99 latency (ms)", [_float(r["p99_ms"]) for r in results]),
        ],
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
