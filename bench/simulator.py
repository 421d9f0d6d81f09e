"""Routing simulator: the gateway's own pipeline, forwarder, router, breakers and retry budget in virtual time.

The production ``Pipeline`` and ``Forwarder`` run unchanged on an asyncio event loop whose clock
jumps to the next timer instead of waiting (``bench/sim/clock.py``); only the hubs are simulated:
``Backend``s whose ``infer`` sleeps a sampled latency on that clock (backbone RTT + service time by
batch size, a number of batches served at once), with prices (and a tariff change) and failures:
one hub dies, one turns slow, one flaps. Requests arrive as a Poisson stream with mixed budgets and
residency and are submitted as the HTTP front submits them. For each policy, for the baselines
``nearest-only`` and ``cheapest-only`` (the same pipeline with a router that ignores budgets, load
and health) and for the clairvoyant (each request on the cheapest hub whose realised latency met its
budget) it reports SLO attainment, cost per 1,000 and as a ratio to the clairvoyant's, p50/p99,
errors, residency breaches (seen by the hubs) and requests lost (never answered; must be 0).

    python -m bench.simulator [--requests N] [--policies a,b] [--rate R] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from bench.sim.oracle import Oracle, clairvoyant
from bench.sim.report import LEGEND, markdown, plot, plot_policies, targets
from bench.sim.run import BASELINES, POLICIES, Simulation, quiet_logs
from bench.sim.scenario import Workload, workload
from railcore.progress import Progress

__all__ = ["BASELINES", "POLICIES", "clairvoyant_row", "main", "markdown", "run_all", "simulate", "targets"]

PICTURES = "![SLO attainment, cost per 1k and p99 per policy](sim_policies.png)\n\n![cost vs SLO misses](sim.png)"
DEFAULT_REQUESTS = 100_000  # 1M per policy took ~40 s on the old copy; the real pipeline does ~3,000/s of CPU


@functools.lru_cache(maxsize=1)
def _world(requests: int, rate: float, seed: int) -> tuple[Workload, Oracle]:
    world = workload(requests, rate, seed)
    return world, clairvoyant(world)


def simulate(policy: str, requests: int, rate: float = 4000.0, seed: int = 7) -> dict[str, object]:
    """One policy's row of the report (the world, and so the clairvoyant, depend on the seed alone)."""
    world, oracle = _world(requests, rate, seed)
    return Simulation(policy, world, seed).run().report(oracle)


def clairvoyant_row(requests: int, rate: float = 4000.0, seed: int = 7) -> dict[str, object]:
    """The clairvoyant's row of the report, for the same world as ``simulate``'s."""
    world, oracle = _world(requests, rate, seed)
    return oracle.report(world)


def run_all(
    policies: list[str], requests: int, rate: float = 4000.0, seed: int = 7, progress: Progress | None = None
) -> list[dict[str, object]]:
    """The clairvoyant's row first, then one row per policy (a progress step each, to stderr)."""
    progress = progress or Progress("sim", len(policies) + 1)
    progress.phase(f"the world and its clairvoyant ({requests} requests)")
    rows = [clairvoyant_row(requests, rate, seed)]
    progress.step("clairvoyant")
    for policy in policies:
        rows.append(simulate(policy, requests, rate, seed))
        row = rows[-1]
        progress.close()  # on a terminal: the policy's line below the progress line, not on its end
        print(f"{policy:14s} {requests} requests in {row['wall_s']} s wall, {row['cpu_s']} s CPU "
              f"({row['requests_per_s']} requests per CPU second)", flush=True)  # fmt: skip
        progress.step(f"{policy} (SLO {100 * float(row['slo_attainment']):.2f}%, lost {row['lost']})")  # type: ignore[arg-type]
    progress.done()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="per policy")
    parser.add_argument("--rate", type=float, default=4000.0, help="requests per virtual second")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("reports/sim"))
    args = parser.parse_args(argv)
    quiet_logs()
    results = run_all(args.policies.split(","), args.requests, args.rate, args.seed)
    table, summary = markdown(results), targets(results)
    print(f"\n{table}\n\n{summary}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim.json").write_text(json.dumps(results, indent=2))
    drawn = plot(results, args.out / "sim.png") & plot_policies(results, args.out / "sim_policies.png")
    pictures = PICTURES if drawn else "(no plots: matplotlib is not installed)"
    (args.out / "sim.md").write_text(f"# Routing simulator\n\n{args.requests} requests per policy, "
                                     f"{args.rate:.0f}/s virtual, seed {args.seed}\n\n{table}\n\n{pictures}\n\n"
                                     f"{summary}\n\n{LEGEND}\n")  # fmt: skip
    print(f"report: {args.out / 'sim.md'} (plots sim.png, sim_policies.png)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
