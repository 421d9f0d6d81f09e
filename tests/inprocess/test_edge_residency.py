"""Residency on the device: a call whose allowed regions (X-Allowed-Regions, forwarded by the edge
server) leave out the device's own region never runs on the device."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import EdgeRuntime, ModelUnavailable, parse_edge_config
from tests.samples import sample_inputs


@pytest.fixture(scope="module")
def offline_device(repository: Path):
    """A device in region plant-7 with no gateway: the device is the only place a call can run."""
    config = parse_edge_config({"repository": str(repository), "models": ["digits"], "region": "plant-7"})
    with EdgeRuntime(config) as rt:
        yield rt


def test_a_call_that_leaves_out_the_device_s_region_never_runs_on_the_device(offline_device: EdgeRuntime) -> None:
    with pytest.raises(ModelUnavailable, match=r"region plant-7 is outside the call's allowed regions \[east, west\]"):
        offline_device.infer_sync("digits", sample_inputs("digits", 1), headers={"X-Allowed-Regions": "west, east"})


def test_a_call_that_allows_the_device_s_region_runs_on_the_device(offline_device: EdgeRuntime) -> None:
    result = offline_device.infer_sync("digits", sample_inputs("digits", 1), headers={"X-Allowed-Regions": "plant-7"})
    assert result.served_by == "local"
