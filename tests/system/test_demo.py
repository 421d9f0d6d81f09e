"""`make demo`, shortened (`--quick`): every act's outcome, from the numbers the demo measured.

The demo runs as `make demo` runs it (`python -m gateway.cli demo`), without a terminal, so it must
tell the whole story and exit by itself with every process stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import procs
from devtools.demo import judge

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def demo(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict]:
    out = tmp_path_factory.mktemp("demo") / "outcomes.json"
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--quick", "--repository", str(repository), "--json", str(out)]
    done = procs.run(cmd, timeout_s=300)  # no stdin: not a terminal, so no hold after the story
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())["outcomes"]


def outcomes(demo: tuple[Any, dict]) -> dict[str, Any]:
    return demo[1]


def test_the_demo_exits_cleanly_after_the_story_and_prints_the_dashboard(demo: tuple[Any, dict]) -> None:
    done, _ = demo
    assert done.returncode == 0, done.stdout[-3000:]
    for act in range(1, 6):
        assert f"\nAct {act}: " in done.stdout
    assert "/dashboard" in done.stdout and "all processes stopped" in done.stdout


def test_nearest_goes_east_and_cheapest_west_for_less(demo: tuple[Any, dict]) -> None:
    prices = outcomes(demo)["prices"]
    assert prices["nearest"]["routes"].get("east-1", 0) > prices["nearest"]["answered"] / 2, prices
    assert prices["cheapest"]["routes"].get("west-1", 0) > prices["cheapest"]["answered"] / 2, prices
    assert prices["cheapest"]["cost"] < prices["nearest"]["cost"]


def test_tight_budgets_never_cross_the_backbone(demo: tuple[Any, dict]) -> None:
    tight = outcomes(demo)["tight"]
    assert set(tight["routes"]) <= {"local"} and tight["answered"] > 0, tight
    # On a loaded machine some miss even the local run's deadline: a clear 504 in time, never a hub.
    assert tight["answered"] + tight["errors"].get("504", 0) == tight["sent"], tight


def test_the_residency_tenant_never_reaches_the_excluded_region(demo: tuple[Any, dict]) -> None:
    residency = outcomes(demo)["residency"]
    assert residency["answered"] == residency["sent"] > 0, residency
    assert set(residency["routes"]) <= {"west-1", "west-2"}, residency
    assert residency["outside"] == 0


def test_a_killed_hub_loses_nothing_and_traffic_fails_over(demo: tuple[Any, dict]) -> None:
    kill = outcomes(demo)["kill"]
    assert kill["lost"] == 0, kill["lost_detail"]
    assert kill["sent"] == kill["answered"] + sum(kill["errors"].values())
    assert kill["before"].get("west-1", 0) > 0, kill  # it served until it died ...
    assert "west-1" not in kill["after"] and sum(kill["after"].values()) > 0, kill  # ... then the others did


def test_the_edge_answers_every_call_with_the_backbone_cut(demo: tuple[Any, dict]) -> None:
    edge = outcomes(demo)["edge"]
    assert sum(n for b, n in edge["up"]["routes"].items() if b != "local") > 0, edge  # offloaded while up
    assert edge["cut"]["answered"] == edge["cut"]["sent"] > 0 and edge["cut"]["lost"] == 0, edge
    assert set(edge["cut"]["routes"]) == {"local"}, edge


def test_every_verdict_of_the_demo_is_ok(demo: tuple[Any, dict]) -> None:
    verdicts = judge(outcomes(demo))
    assert len(verdicts) == 5 and all(v.startswith("ok") for v in verdicts), verdicts


def test_a_verdict_says_not_shown_when_the_numbers_do_not_prove_it() -> None:
    lost = {"kill": {"sent": 10, "answered": 9, "errors": {}, "lost": 1, "before": {"west-1": 5}, "after": {}}}
    assert judge(lost)[0].startswith("NOT SHOWN")


def test_on_a_terminal_the_stack_stays_up_for_the_dashboard_until_ctrl_c(repository: Path) -> None:
    """stdin a terminal (a pty): after the story the demo holds the stack; Ctrl-C (SIGINT) stops it all."""
    import os
    import pty
    import selectors
    import signal
    import subprocess
    import time

    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--quick", "--repository", str(repository)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come, through the pipe
    proc = subprocess.Popen(
        cmd,
        env=env,
        **{**procs.child_options(), "stdin": secondary},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(secondary)
    seen = ""
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()  # raw reads: a buffered readline could sit on the line we wait for
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + 240
        while "Ctrl-C stops it" not in seen and time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen += chunk.decode(errors="replace")
        assert "Ctrl-C stops it" in seen, seen[-3000:]
        assert proc.poll() is None  # holding the stack for a person, not gone
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode == 0, rest
        assert rest.rstrip().endswith("all processes stopped"), seen[-2000:] + rest
    finally:
        procs.terminate(proc, timeout_s=0)
        os.close(primary)
