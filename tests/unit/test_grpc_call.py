"""A gRPC call's context -> the service's ``Call``: metadata as sent, the deadline as a transport budget."""

from __future__ import annotations

import pytest

from gateway.fronts.grpc import call_from_context


class FakeContext:
    """The part of ``grpc.aio.ServicerContext`` the front reads."""

    def __init__(self, remaining: float | None, cancelled: bool = False) -> None:
        self.remaining = remaining
        self._cancelled = cancelled

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return self._cancelled


@pytest.mark.parametrize(
    ("remaining", "budget"),
    [(None, None), (2.5, 2.5), (0.0, 0.0), (-0.3, 0.0)],
    ids=["no-deadline", "deadline-ahead", "deadline-now", "deadline-already-past"],
)
def test_the_grpc_deadline_becomes_the_transport_budget(remaining: float | None, budget: float | None):
    call = call_from_context(FakeContext(remaining), {}, now=100.0)  # type: ignore[arg-type]
    assert call.transport_budget_s == budget and call.arrived == 100.0


def test_metadata_keys_become_the_calls_fields_unparsed():
    metadata = {"authorization": "Bearer k", "x-latency-budget-ms": "soon", "x-route-policy": "cheapest",
                "x-allowed-regions": "west", "x-priority": "vip"}  # fmt: skip
    call = call_from_context(FakeContext(None), metadata, now=0.0)  # type: ignore[arg-type]
    assert (call.authorization, call.budget_ms, call.policy, call.regions, call.priority) == (
        "Bearer k", "soon", "cheapest", "west", "vip"
    )  # fmt: skip


def test_a_cancelled_context_is_a_call_whose_client_is_gone():
    assert call_from_context(FakeContext(None, cancelled=True), {}, now=0.0).gone()  # type: ignore[arg-type]
    assert not call_from_context(FakeContext(None), {}, now=0.0).gone()  # type: ignore[arg-type]
