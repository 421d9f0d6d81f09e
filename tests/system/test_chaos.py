"""The faulty-hub chaos scenarios, short (2 s of load each): every request answered, none lost.

Overload and SIGTERM have their own tests (test_drain.py); `make chaos` runs every scenario for 30 s.
"""

from __future__ import annotations

import pytest

from bench.chaos import SCENARIOS, run_scenarios, table

FAULTY_HUB = ["blackhole", "http500", "garbage", "cut"]


@pytest.mark.parametrize("name", FAULTY_HUB)
def test_a_misbehaving_hub_loses_no_request(name: str) -> None:
    assert name in SCENARIOS
    (row,) = run_scenarios([name], seconds=2.0)
    print(f"\n{table([row])}")
    assert row["lost"] == 0, row
    assert row["ok"] > 0, row
