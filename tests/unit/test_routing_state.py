"""Live hub state, predictions, tariffs and the router over static backends (no sockets)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gateway.backends import Backend
from gateway.config import Health, HubSpec, ModelPrice, Routing, TariffWindow
from gateway.routing.policy import Route
from gateway.routing.router import Router
from gateway.routing.state import BackendState, batch_bucket
from gateway.routing.tariff import price_now
from railcore.breaker import BreakerState
from railcore.catalog import ModelInfo, TensorMeta
from railcore.errors import Cause, NoBackend

INFO = ModelInfo("m", ("1",), "onnx", (TensorMeta("x", "FP32", (-1, 4)),), (TensorMeta("y", "FP32", (-1, 1)),), 64)


class StaticBackend(Backend):
    """A stand-in for a remote hub in pure router tests: it has state, never does I/O."""

    kind = "hub"

    def __init__(self, name: str, region: str = "west", price: float = 1.0) -> None:
        super().__init__(name, region, price, 0.0, capacity=4)
        self.models = {"m": INFO}
        self.healthy = True

    async def discover(self):
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        return True

    async def infer(self, model, version, inputs, outputs, deadline, timeout_s=None) -> dict[str, np.ndarray]:
        raise AssertionError("router tests never call a backend")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def router_with(*backends: Backend, clock: FakeClock | None = None) -> Router:
    router = Router(list(backends), health=Health(failures_to_eject=2, slow_start_s=0.0), rng=random.Random(1),
                    clock=clock or FakeClock())  # fmt: skip
    router.rebuild_catalog()
    return router


def test_batch_buckets_are_powers_of_two() -> None:
    assert [batch_bucket(r) for r in (1, 2, 3, 4, 5, 64, 65)] == [1, 2, 4, 4, 8, 64, 128]


def test_prediction_is_rtt_plus_service_at_batch_size_plus_queueing() -> None:
    state = BackendState()
    state.rtt.update(0.020)
    state.record("m", rows=8, seconds=0.030, ok=True)  # service 10 ms at bucket 8
    assert state.predicted_s("m", 8, inflight=0, capacity=4) == pytest.approx(0.030)
    assert state.predicted_s("m", 8, inflight=4, capacity=4) == pytest.approx(0.040)
    assert state.predicted_s("m", 16, inflight=0, capacity=4) == pytest.approx(0.040), "scaled from bucket 8"
    assert state.predicted_s("other", 1, 0, 4) is None


def test_failures_eject_a_hub_and_the_router_stops_choosing_it() -> None:
    clock = FakeClock()
    a, b = StaticBackend("a"), StaticBackend("b")
    router = router_with(a, b, clock=clock)
    router.report(a, "m", 1, 0.01, ok=False)
    router.report(a, "m", 1, 0.01, ok=False)
    assert [x.name for x in router.candidates("m")] == ["b"]
    assert all(router.choose("m", 1.0, Route()).backend is b for _ in range(20))
    clock.now = 1.0  # the 1 s ejection is over: half-open, one trial batch
    assert {x.name for x in router.candidates("m")} == {"a", "b"}


def test_batches_already_sent_to_a_dead_hub_eject_it_once() -> None:
    clock = FakeClock()
    a, b = StaticBackend("a", price=1.0), StaticBackend("b", price=2.0)
    router = router_with(a, b, clock=clock)
    sent = [router.choose("m", 1.0, Route("cheapest")) for _ in range(10)]
    assert {s.backend.name for s in sent} == {"a"}
    for selection in sent:
        router.report(a, "m", 1, 0.01, ok=False, ticket=selection.ticket, cause=Cause.UNREACHABLE)
    breaker = router.breakers["a"]
    assert breaker.ejections == 1 and breaker.open_until == pytest.approx(1.0), "the back-off did not grow"
    assert breaker.failures_by_cause == {Cause.UNREACHABLE: 10}


def test_a_released_trial_lets_the_next_batch_try_the_hub_again() -> None:
    clock = FakeClock()
    a, b = StaticBackend("a", price=1.0), StaticBackend("b", price=2.0)
    router = router_with(a, b, clock=clock)
    router.report(a, "m", 1, 0.01, ok=False)
    router.report(a, "m", 1, 0.01, ok=False)
    clock.now = 1.0
    trial = router.choose("m", 1.0, Route("cheapest"))
    assert trial.backend is a and trial.ticket is not None and trial.ticket.trial
    assert [x.name for x in router.candidates("m")] == ["b"], "one trial at a time"
    router.release(a, trial.ticket, Cause.REJECTED)
    assert {x.name for x in router.candidates("m")} == {"a", "b"}
    assert router.breakers["a"].state is BreakerState.HALF_OPEN


def test_draining_hub_gets_no_new_batches() -> None:
    a, b = StaticBackend("a"), StaticBackend("b")
    router = router_with(a, b)
    router.draining.add("a")
    assert all(router.choose("m", 1.0, Route()).backend is b for _ in range(20))


def test_residency_never_breached_and_the_error_names_the_regions() -> None:
    router = router_with(StaticBackend("w", region="west"), StaticBackend("e", region="east"))
    route = Route("cheapest", frozenset({"east"}))
    assert all(router.choose("m", 1.0, route).backend.name == "e" for _ in range(50))
    router.report(router.backend("e"), "m", 1, 0.1, ok=False)
    router.report(router.backend("e"), "m", 1, 0.1, ok=False)
    with pytest.raises(NoBackend, match=r"allowed regions \[east\]"):
        router.choose("m", 1.0, route)


def test_excluded_hubs_are_not_retried() -> None:
    router = router_with(StaticBackend("a"), StaticBackend("b"))
    assert router.choose("m", 1.0, Route(), exclude=frozenset({"a"})).backend.name == "b"
    with pytest.raises(NoBackend, match="tried a, b"):
        router.choose("m", 1.0, Route(), exclude=frozenset({"a", "b"}))


def test_hub_whose_metadata_disagrees_is_not_used_for_that_model() -> None:
    odd = StaticBackend("odd")
    odd.models = {"m": ModelInfo("m", ("1",), "onnx", (TensorMeta("x", "FP32", (-1, 5)),), INFO.outputs, 64)}
    router = router_with(StaticBackend("a"), odd)
    assert [b.name for b in router.candidates("m")] == ["a"]


@pytest.mark.parametrize(
    ("minute", "model", "price"),
    [(23 * 60, "digits", 0.01), (3 * 60, "digits", 0.01), (6 * 60, "digits", 0.02), (23 * 60, "vision", 0.5)],
)
def test_tariff_windows_wrap_midnight_and_model_prices_win(minute: int, model: str, price: float) -> None:
    hub = HubSpec(
        "h", "http://h:1", price_per_1k=0.02,
        model_prices=(ModelPrice("vision", 0.5),), tariff=(TariffWindow("22:00", "06:00", 0.01),),
    )  # fmt: skip
    assert price_now(hub, model, minute) == price


def test_an_unsampled_estimate_fades_so_the_hub_is_tried_again() -> None:
    state = BackendState()
    state.record("m", rows=1, seconds=0.200, ok=True, now=0.0)
    assert state.predicted_s("m", 1, 0, 4, now=0.0, decay_s=10.0) == pytest.approx(0.200)
    assert state.predicted_s("m", 1, 0, 4, now=10.0, decay_s=10.0) == pytest.approx(0.200 / np.e)
    assert state.predicted_s("m", 1, 0, 4, now=10.0, decay_s=0.0) == pytest.approx(0.200), "decay off"


def test_the_hub_s_own_queue_time_adds_to_the_prediction() -> None:
    state = BackendState()
    state.record("m", 1, 0.010, ok=True)
    quiet = state.predicted_s("m", 1, inflight=0, capacity=4)
    state.model("m").hub_queue_s = 0.050
    assert state.predicted_s("m", 1, inflight=0, capacity=4) == pytest.approx(quiet + 0.050)


def test_our_own_queueing_counts_when_it_is_longer_than_the_hub_s() -> None:
    state = BackendState()
    state.record("m", 1, 0.010, ok=True)
    state.model("m").hub_queue_s = 0.001
    assert state.predicted_s("m", 1, inflight=8, capacity=4) == pytest.approx(0.010 + 2 * 0.010)


# -- routing on the tail (fake clock): the hub's recent p99 must fit the budget, not its mean ------


class StaticLocal(StaticBackend):
    kind = "local"

    def __init__(self) -> None:
        super().__init__("local", region="local", price=0.0)


def loaded(router: Router, clock: FakeClock, backend: Backend, samples_ms: list[float]) -> None:
    for ms in samples_ms:
        clock.now += 0.010
        router.report(backend, "m", 1, ms / 1000, ok=True)


SPIKY = [30.0 if i % 10 == 0 else 4.0 for i in range(100)]  # p50 4 ms, one call in ten 30 ms


def test_a_hub_whose_tail_exceeds_a_tight_budget_loses_to_local_though_its_mean_fits() -> None:
    clock = FakeClock()
    h1, local = StaticBackend("h1"), StaticLocal()
    router = router_with(h1, local, clock=clock)
    loaded(router, clock, h1, SPIKY)
    loaded(router, clock, local, [1.0] * 20)
    assert router.predicted_s(h1, "m") < 0.010, "the mean-ish prediction alone would keep the hub"
    tight = router.choose("m", 0.010, Route())
    assert tight.backend is local and "no hub fits" in tight.reason
    assert router.choose("m", 0.050, Route()).backend is h1, "a budget its tail fits keeps the hub"


def test_a_hub_whose_tail_fits_keeps_tight_requests() -> None:
    clock = FakeClock()
    h1, local = StaticBackend("h1"), StaticLocal()
    router = router_with(h1, local, clock=clock)
    loaded(router, clock, h1, [4.0] * 100)
    loaded(router, clock, local, [1.0] * 20)
    assert router.choose("m", 0.010, Route()).backend is h1


def test_residency_still_holds_when_the_tail_sends_requests_local() -> None:
    clock = FakeClock()
    h1, local = StaticBackend("h1"), StaticLocal()
    router = router_with(h1, local, clock=clock)
    loaded(router, clock, h1, SPIKY)
    loaded(router, clock, local, [1.0] * 20)
    assert router.choose("m", 0.010, Route(regions=frozenset({"west"}))).backend is h1


def test_a_hub_kept_out_by_its_tail_is_tried_again_once_its_window_ages() -> None:
    clock = FakeClock()
    h1, local = StaticBackend("h1"), StaticLocal()
    router = router_with(h1, local, clock=clock)
    loaded(router, clock, h1, SPIKY)
    loaded(router, clock, local, [1.0] * 20)
    assert router.choose("m", 0.010, Route()).backend is local
    clock.now += 4 * router.config.ewma_decay_s  # nothing sampled the hub since
    assert router.choose("m", 0.010, Route()).backend is h1


def test_tail_quantile_zero_routes_on_the_prediction_as_before() -> None:
    clock = FakeClock()
    h1, local = StaticBackend("h1"), StaticLocal()
    router = Router([h1, local], Routing(tail_quantile=0.0), Health(slow_start_s=0.0), random.Random(1), clock)
    router.rebuild_catalog()
    loaded(router, clock, h1, SPIKY)
    loaded(router, clock, local, [1.0] * 20)
    assert router.choose("m", 0.010, Route()).backend is h1


def test_the_tail_is_per_batch_size_so_big_batches_do_not_inflate_single_requests() -> None:
    state = BackendState()
    for i in range(50):
        state.record("m", rows=64, seconds=0.040, ok=True, now=i)
        state.record("m", rows=1, seconds=0.004, ok=True, now=i)
    assert state.tail_s("m", 1, 0, 4, quantile=0.99, now=50) == pytest.approx(0.004)
    assert state.tail_s("m", 64, 0, 4, quantile=0.99, now=50) == pytest.approx(0.040)
    assert state.tail_s("other", 1, 0, 4, quantile=0.99) is None
