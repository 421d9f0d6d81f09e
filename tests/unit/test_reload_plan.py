"""plan_reload: what a new hub table does to each hub, decided without starting or stopping one."""

from __future__ import annotations

from gateway.config import HubSpec
from gateway.reload import ReloadPlan, plan_reload

WEST = HubSpec("west-1", "http://10.0.0.1:8000", region="west", price_per_1k=0.02)
EAST = HubSpec("east-1", "http://10.0.0.2:8000", region="east", price_per_1k=0.05)
NORTH = HubSpec("north-1", "10.0.0.3:8001", protocol="grpc")


def test_an_unchanged_table_changes_nothing():
    assert plan_reload([WEST, EAST], [EAST, WEST]) == ReloadPlan()
    assert ReloadPlan().changes() == {"added": [], "removed": [], "updated": []}


def test_a_new_name_is_added_and_started():
    plan = plan_reload([WEST], [WEST, EAST])
    assert plan == ReloadPlan(added=(EAST,), started=(EAST,))
    assert plan.changes() == {"added": ["east-1"], "removed": [], "updated": []}


def test_a_name_no_longer_listed_is_removed():
    plan = plan_reload([WEST, EAST, NORTH], [EAST])
    assert plan == ReloadPlan(removed=("west-1", "north-1"))
    assert plan.changes()["removed"] == ["west-1", "north-1"]


def test_a_new_price_region_or_capacity_at_the_same_address_is_applied_in_place():
    cheaper = HubSpec("west-1", WEST.url, region="west-b", price_per_1k=0.01, max_inflight=16)
    plan = plan_reload([WEST, EAST], [cheaper, EAST])
    assert plan == ReloadPlan(updated=(cheaper,))
    assert plan.changes() == {"added": [], "removed": [], "updated": ["west-1"]}


def test_a_new_address_or_protocol_replaces_the_hub():
    moved = HubSpec("west-1", "http://10.0.0.9:8000", region="west", price_per_1k=0.02)
    over_grpc = HubSpec("east-1", "10.0.0.2:8001", region="east", price_per_1k=0.05, protocol="grpc")
    plan = plan_reload([WEST, EAST], [moved, over_grpc])
    assert plan == ReloadPlan(replaced=(moved, over_grpc), started=(moved, over_grpc))
    # A replaced hub is reported as removed and added, as an operator sees it.
    assert plan.changes() == {"added": ["west-1", "east-1"], "removed": ["west-1", "east-1"], "updated": []}


def test_hubs_start_in_the_new_file_s_order_and_replaced_ones_are_removed_first():
    moved = HubSpec("east-1", "http://10.0.0.8:8000", region="east")
    plan = plan_reload([WEST, EAST], [NORTH, moved])
    assert plan.started == (NORTH, moved)
    assert plan.changes() == {"added": ["north-1", "east-1"], "removed": ["east-1", "west-1"], "updated": []}
