"""A call's metadata: read from HTTP headers or gRPC metadata alike, each value parsed by a pure function."""

from __future__ import annotations

import math
import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.call import Call, allowed_regions, arrival, budget_s, call_from_metadata, priority, route_policy
from gateway.config import Deadlines
from railcore.errors import BadRequest
from railcore.protocol.codec import header_length

DEADLINES = Deadlines(default_budget_ms=10_000.0, max_budget_ms=300_000.0)
SENT = {
    "authorization": "Bearer rg_key",
    "x-latency-budget-ms": "250",
    "x-route-policy": "cheapest",
    "x-allowed-regions": "west,north",
    "x-priority": "high",
}


def test_http_headers_are_read_whatever_their_case():
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer rg_key", "X-LATENCY-BUDGET-MS": "250",
                                            "X-Route-Policy": "cheapest", "x-allowed-regions": "west,north",
                                            "X-Priority": "high"}))  # fmt: skip
    assert call_from_metadata(headers, arrived=1.0) == call_from_metadata(SENT, arrived=1.0)


def test_grpc_metadata_fills_every_field_as_sent():
    gone = lambda: True  # noqa: E731
    call = call_from_metadata(SENT, arrived=2.5, gone=gone, body_bytes=64, trace="span")
    assert call == Call(2.5, gone, "Bearer rg_key", "250", "cheapest", "west,north", "high", 64, "span")


def test_metadata_not_sent_is_none_and_the_caller_is_never_gone():
    call = call_from_metadata({}, arrived=0.0)
    assert (call.authorization, call.budget_ms, call.policy, call.regions, call.priority) == (None,) * 5
    assert call.gone() is False


@pytest.mark.parametrize(
    ("header", "timeout_us", "expected_s"),
    [
        (None, None, 10.0),  # the default budget
        ("250", None, 0.25),
        ("0", None, 0.0),
        (None, 50_000, 0.05),  # the v2 timeout parameter, in microseconds
        ("250", 50_000, 0.05),  # the tighter of the two
        ("20", 50_000, 0.02),
        ("1e9", None, 300.0),  # capped at max_budget_ms
        (None, 10**400, 300.0),  # a valid JSON integer no float can hold: capped before dividing
        (None, 1.5e6, 1.5),
    ],
)
def test_the_budget_is_the_tighter_of_header_and_timeout_within_the_cap(header, timeout_us, expected_s):
    assert budget_s(header, timeout_us, DEADLINES) == pytest.approx(expected_s)


@pytest.mark.parametrize("header", ["abc", "-1", "nan", "inf", "", "1,5"])
def test_a_budget_header_that_is_no_non_negative_number_is_400(header):
    with pytest.raises(BadRequest, match="X-Latency-Budget-Ms must be a non-negative number of milliseconds"):
        budget_s(header, None, DEADLINES)


@pytest.mark.parametrize("timeout_us", [-1, math.nan, True, "100", [1]])
def test_a_timeout_parameter_that_is_no_non_negative_number_is_400(timeout_us):
    with pytest.raises(BadRequest, match="parameter 'timeout' must be a non-negative number of microseconds"):
        budget_s(None, timeout_us, DEADLINES)


def test_the_policy_is_the_header_s_else_the_default():
    assert route_policy(None, "nearest") == "nearest"
    assert route_policy(" cheapest ", "nearest") == "cheapest"


@pytest.mark.parametrize("header", ["bogus", "", "Cheapest"])
def test_an_unknown_policy_is_400_naming_the_valid_ones(header):
    with pytest.raises(BadRequest, match="is not a policy; valid: nearest, cheapest"):
        route_policy(header, "nearest")


def test_regions_are_a_comma_separated_set_or_none():
    assert allowed_regions(None) is None
    assert allowed_regions("west, north ,west") == frozenset({"west", "north"})


@pytest.mark.parametrize(("header", "bad"), [("west,!!", "!!"), ("", ""), ("west,", ""), ("-west", "-west")])
def test_a_malformed_region_list_is_400_naming_the_bad_one(header, bad):
    with pytest.raises(BadRequest, match=f"got {header!r} \\(bad: {bad!r}\\)"):
        allowed_regions(header)


def test_the_priority_is_the_header_s_in_any_case_else_the_tenant_s():
    assert priority(None, "low") == "low"
    assert priority(" HIGH ", "low") == "high"


def test_an_unknown_priority_is_400():
    with pytest.raises(BadRequest, match="X-Priority 'urgent' is not a priority; valid: high, normal, low"):
        priority("urgent", "normal")


def test_the_binary_header_length_takes_ascii_digits_only():
    assert header_length({}) is None
    assert header_length(CIMultiDict({"inference-header-content-length": "42"})) == 42
    for raw in ("-1", "²", "١٢", "4 2", ""):
        with pytest.raises(BadRequest, match="Inference-Header-Content-Length must be a non-negative integer"):
            header_length({"Inference-Header-Content-Length": raw})


def test_the_shared_budget_parser_takes_the_tighter_and_caps_huge_timeouts():
    from railcore.budget import requested_budget_ms

    assert requested_budget_ms(None, None, 1000.0) is None
    assert requested_budget_ms("30", 20_000, 1000.0) == 20.0
    assert requested_budget_ms(None, 10**400, 1000.0) == 1000.0  # a valid JSON number, no float: capped first
    with pytest.raises(BadRequest, match="X-Latency-Budget-Ms"):
        requested_budget_ms("nan", None, 1000.0)


class _Clock:
    """A stand-in for an event loop: only its clock, ``offset_s`` behind the monotonic one."""

    def __init__(self, offset_s: float | None = None, fixed: float | None = None) -> None:
        self.offset_s, self.fixed = offset_s, fixed

    def time(self) -> float:
        return self.fixed if self.fixed is not None else time.monotonic() - (self.offset_s or 0.0)


def test_an_arrival_is_not_stamped_up_to_a_millisecond_early_on_a_coarse_loop_clock() -> None:
    # uvloop's clock: the monotonic one in 1 ms steps, up to one behind; the budget counts from now.
    before = time.monotonic()
    stamped = arrival(_Clock(offset_s=0.0009))  # type: ignore[arg-type]
    assert before <= stamped <= time.monotonic()
    # A clock that is not the monotonic one (virtual time) is the loop's own, whatever it reads.
    assert arrival(_Clock(fixed=12.5)) == 12.5  # type: ignore[arg-type]
    assert arrival(_Clock(offset_s=-3600.0)) > time.monotonic() + 3000  # type: ignore[arg-type]
