"""`make demo`, shortened (`--quick`): every act's outcome, from the numbers the demo measured.

The demo runs once, as a person runs it (`python -m gateway.cli demo` with a terminal): it must tell the
whole story, hold the stack for the dashboard, and stop every process on Ctrl-C. Without a terminal
(`make demo` under CI) it does not hold: a test of ``hold`` checks that.
"""

from __future__ import annotations

import json
import os
import pty
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import procs
from devtools.demo import hold, judge

pytestmark = pytest.mark.hub


@dataclass
class Told:
    """One `demo --quick` run on a terminal: what it printed, whether it held the stack after the story,
    its exit status after Ctrl-C, and each act's measured outcome (``--json``)."""

    output: str
    held: bool
    returncode: int | None
    outcomes: dict[str, Any]


@pytest.fixture(scope="module")
def told(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Told:
    """The demo as a person runs it: stdin a terminal (a pty), so after the story it holds the stack
    for the dashboard; Ctrl-C (SIGINT) then stops it all. One run serves every test here.

    It starts with SIGINT ignored, as a non-interactive shell starts a background job (``make test &``,
    CI runners): the ignore is inherited and Python keeps it, so the demo must take Ctrl-C itself."""
    out = tmp_path_factory.mktemp("demo") / "outcomes.json"
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--quick", "--repository", str(repository), "--json", str(out)]
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come, through the pipe
    options = procs.child_options()
    die_with_parent = options["preexec_fn"]

    def started_as_a_background_job() -> None:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    options.update(stdin=secondary, preexec_fn=started_as_a_background_job)
    proc = subprocess.Popen(cmd, env=env, **options, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(secondary)
    seen = ""
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()  # raw reads: a buffered readline could sit on the line we wait for
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + 300
        while "Ctrl-C stops it" not in seen and time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen += chunk.decode(errors="replace")
        held = "Ctrl-C stops it" in seen and proc.poll() is None  # holding the stack for a person, not gone
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            seen += proc.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:  # say how far it got: a hang is a finding, not just a timeout
            procs.terminate(proc, timeout_s=0)
            seen += proc.communicate()[0].decode(errors="replace")
            pytest.fail(f"the demo did not stop within 60 s of Ctrl-C (held: {held}); its output:\n{seen[-4000:]}")
    finally:
        procs.terminate(proc, timeout_s=0)
        os.close(primary)
    assert out.is_file(), seen[-3000:]
    return Told(seen, held, proc.returncode, json.loads(out.read_text())["outcomes"])


def outcomes(told: Told) -> dict[str, Any]:
    return told.outcomes


def test_the_demo_tells_every_act_prints_the_dashboard_and_stops_cleanly_on_ctrl_c(told: Told) -> None:
    assert told.returncode == 0, told.output[-3000:]
    for act in range(1, 6):
        assert f"\nAct {act}: " in told.output
    assert "/dashboard" in told.output
    assert told.output.rstrip().endswith("all processes stopped"), told.output[-2000:]


def test_on_a_terminal_the_stack_stays_up_for_the_dashboard_until_ctrl_c(told: Told) -> None:
    assert told.held, told.output[-3000:]


def test_without_a_terminal_the_demo_does_not_hold_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` under CI (stdin not a terminal) exits after the story: ``hold`` returns at once."""
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert hold(None) is None


def test_nearest_goes_east_and_cheapest_west_for_less(told: Told) -> None:
    prices = outcomes(told)["prices"]
    assert prices["nearest"]["routes"].get("east-1", 0) > prices["nearest"]["answered"] / 2, prices
    assert prices["cheapest"]["routes"].get("west-1", 0) > prices["cheapest"]["answered"] / 2, prices
    assert prices["cheapest"]["cost"] < prices["nearest"]["cost"]


def test_tight_budgets_never_cross_the_backbone(told: Told) -> None:
    tight = outcomes(told)["tight"]
    assert set(tight["routes"]) <= {"local"} and tight["answered"] > 0, tight
    # On a loaded machine some miss even the local run's deadline: a clear 504 in time, never a hub.
    assert tight["answered"] + tight["errors"].get("504", 0) == tight["sent"], tight


def test_the_residency_tenant_never_reaches_the_excluded_region(told: Told) -> None:
    residency = outcomes(told)["residency"]
    assert residency["answered"] == residency["sent"] > 0, residency
    assert set(residency["routes"]) <= {"west-1", "west-2"}, residency
    assert residency["outside"] == 0


def test_a_killed_hub_loses_nothing_and_traffic_fails_over(told: Told) -> None:
    kill = outcomes(told)["kill"]
    assert kill["lost"] == 0, kill["lost_detail"]
    assert kill["sent"] == kill["answered"] + sum(kill["errors"].values())
    assert kill["before"].get("west-1", 0) > 0, kill  # it served until it died ...
    assert "west-1" not in kill["after"] and sum(kill["after"].values()) > 0, kill  # ... then the others did


def test_the_edge_answers_every_call_with_the_backbone_cut(told: Told) -> None:
    edge = outcomes(told)["edge"]
    assert sum(n for b, n in edge["up"]["routes"].items() if b != "local") > 0, edge  # offloaded while up
    assert edge["cut"]["answered"] == edge["cut"]["sent"] > 0 and edge["cut"]["lost"] == 0, edge
    assert set(edge["cut"]["routes"]) == {"local"}, edge


def test_every_verdict_of_the_demo_is_ok(told: Told) -> None:
    verdicts = judge(outcomes(told))
    assert len(verdicts) == 5 and all(v.startswith("ok") for v in verdicts), verdicts


def test_a_verdict_says_not_shown_when_the_numbers_do_not_prove_it() -> None:
    lost = {"kill": {"sent": 10, "answered": 9, "errors": {}, "lost": 1, "before": {"west-1": 5}, "after": {}}}
    assert judge(lost)[0].startswith("NOT SHOWN")
