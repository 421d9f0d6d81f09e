"""Polling a hub's Triton statistics: what the router learns from them, and how a failing scrape is
told (once per change, not once per poll)."""

from __future__ import annotations

import logging

import pytest

from gateway.config import Health
from gateway.metrics import Metrics
from gateway.probes import Probes
from railcore.errors import HubUnreachable
from tests.fakes import ScriptedBackend, router_over, virtual_time


class StatsHub(ScriptedBackend):
    """A hub whose statistics endpoint answers (cumulative count, queue ns, compute ns) or fails, in turn."""

    def __init__(self, *answers: tuple[float, float, float] | None) -> None:
        super().__init__("west-1")
        self.answers = list(answers)

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        answer = self.answers.pop(0)
        if answer is None:
            raise HubUnreachable("hub west-1 failed: connection refused")
        return {"m": answer}


def scrape_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[0] for r in caplog.records if "stats_scrape" in r.getMessage()]


@virtual_time
async def test_the_hub_s_queue_time_since_the_last_scrape_reaches_the_router() -> None:
    hub = StatsHub((10, 1e6, 5e6), (20, 1e6 + 10 * 4e6, 5e6 + 10 * 2e6))
    probes = Probes(router_over(hub), Metrics(), Health())
    await probes.read_statistics(hub)
    await probes.read_statistics(hub)
    model = probes.router.state["west-1"].models["m"]
    assert (model.hub_queue_s, model.hub_compute_s) == (pytest.approx(0.004), pytest.approx(0.002))


@virtual_time
async def test_a_failing_scrape_is_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    ok = (1.0, 0.0, 0.0)
    hub = StatsHub(None, None, None, ok, ok, None, None)
    probes = Probes(router_over(hub), Metrics(), Health())
    with caplog.at_level(logging.INFO, logger="railgate"):
        for _ in range(7):
            await probes.read_statistics(hub)
    assert scrape_logs(caplog) == [
        "event=stats_scrape_failed",
        "event=stats_scrape_restored",
        "event=stats_scrape_failed",
    ]
