"""The faulty-hub chaos scenarios, short (2 s of load each): the fault fires, and every request is answered.

Overload and SIGTERM have their own tests (test_drain.py); `make chaos` runs every scenario for 30 s.
A scenario whose fault never fired proves nothing, so each test also reads, from the gateway's own
``/metrics``, the failed batches it counted against the faulty hub.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import chaos
from bench.chaos import REPOSITORY, SCENARIOS, Tally, table
from devtools.devstack import DevStack

FAULTY_HUB = ["blackhole", "http500", "garbage", "cut"]
# `make chaos` lets 300 infer calls through before the fault (30 s of load); in 2 s the faulty hub
# often saw fewer, so the fault never fired. Past its warm-up (a batch per size per model), 60 do.
FAULT_AFTER_CALLS = 60


def hub_failures(gateway_url: str, backend: str) -> dict[str, float]:
    """``railgate_hub_failures_total`` for ``backend``, by cause, as the gateway counted them."""
    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        sample.labels["cause"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "railgate_hub_failures"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("backend") == backend
    }


def run_faulty(name: str, seconds: float = 2.0) -> tuple[Tally, dict[str, float]]:
    """Run scenario ``name`` and read, before its stack goes, what its gateway counted against hub 'bad'."""
    with DevStack(REPOSITORY) as stack:
        tally = SCENARIOS[name](stack, seconds)
        (gateway,) = stack.gateways
        return tally, hub_failures(gateway.url, "bad")


@pytest.mark.parametrize("name", FAULTY_HUB)
def test_a_misbehaving_hub_loses_no_request(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = chaos.faulty_hub
    monkeypatch.setattr(
        chaos, "faulty_hub", lambda stack, upstream, mode, after_calls: real(stack, upstream, mode, FAULT_AFTER_CALLS)
    )
    tally, failures = run_faulty(name)
    row = tally.row()
    print(f"\n{table([row])}\nfailures counted against the faulty hub: {failures}")
    assert sum(failures.values()) > 0, f"the {name} fault never fired: no failed batch at hub 'bad' ({row})"
    assert row["lost"] == 0, row
    assert row["ok"] > 0, row


def test_make_chaos_with_one_short_row_writes_its_table_and_plot(tmp_path) -> None:
    """`bench.chaos` end to end, one scenario of 2 s: the report's table, its PNG, a progress line per row."""
    import io
    from contextlib import redirect_stderr

    from tests.unit.test_report_plots import assert_png

    err = io.StringIO()
    with redirect_stderr(err):
        code = chaos.main(["--only", "http500", "--seconds", "2", "--out", str(tmp_path)])
    assert code == 0, (tmp_path / "chaos.md").read_text()
    assert_png(tmp_path / "chaos.png")
    assert "](chaos.png)" in (tmp_path / "chaos.md").read_text()
    assert "chaos 1/1 (100%)  http500: sent " in err.getvalue()
