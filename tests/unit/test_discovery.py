"""Discovery and warm-up fail per model, never per hub: a hub with one model that cannot be read
or warmed serves the rest (no real hub: fakes that answer or refuse)."""

from __future__ import annotations

import logging

import pytest

from gateway.backends.triton import _read_models
from gateway.config import Health
from gateway.metrics import Metrics
from gateway.probes import Probes
from railcore.catalog import ModelInfo
from railcore.errors import HubError
from tests.fakes import MODEL, ScriptedBackend, hub_failed, router_over, virtual_time


async def test_a_model_whose_metadata_cannot_be_read_is_skipped_and_the_rest_discovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def read(name: str) -> ModelInfo:
        if name == "broken":
            raise HubError("hub west-1: GET /v2/models/broken/config answered 500")
        return MODEL

    with caplog.at_level(logging.WARNING, "railgate.hub"):
        models = await _read_models("west-1", ["broken", "m"], read)
    assert list(models) == ["m"]
    assert "event=model_discover_failed hub=west-1 model=broken skipped=true" in caplog.text


class ComingUp(ScriptedBackend):
    """A hub the router has not seen ready yet, whose probe now answers ready."""

    async def probe(self, timeout_s: float) -> bool:
        return True


@virtual_time
async def test_a_hub_whose_warm_up_fails_is_still_marked_ready(caplog: pytest.LogCaptureFixture) -> None:
    hub = ComingUp("west-1", handler=hub_failed())  # every warm-up batch answers 500
    hub.healthy = False
    probes = Probes(router_over(hub), Metrics(), Health(warmup=True))
    with caplog.at_level(logging.WARNING, "railgate.gateway"):
        assert await probes.refresh(hub) is True
    assert hub.healthy
    assert "event=warmup_failed hub=west-1 model=m still_served=true" in caplog.text
    assert "discover_failed" not in caplog.text
