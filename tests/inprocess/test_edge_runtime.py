"""EdgeRuntime on its own (no gateway): real ONNX Runtime sessions over a copy of the model repository."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge import EdgeConfig, EdgeRuntime, ModelRefused, ModelUnavailable, parse_edge_config
from edge.engine import MicroBatcher, load_model
from edge.store import ModelStore, sha256_hex
from models.foreign import build_foreign_repository
from railcore.batching import BatchPolicy
from railcore.errors import BadRequest, NoBackend
from railcore.settings import ConfigError
from tests.samples import assert_same_outputs, copy_repository, local_outputs, sample_inputs

MODELS = ["digits", "vision", "anomaly", "vocab"]


def edge_config(repository: Path, **overrides) -> EdgeConfig:
    return parse_edge_config({"repository": str(repository), **overrides})


@pytest.fixture(scope="module")
def runtime(repository: Path):
    """One runtime over the built repository, on a loop of its own (the sync API's way)."""
    with EdgeRuntime(edge_config(repository, threads={"intra_op": 1, "inter_op": 1})) as rt:
        yield rt


@pytest.mark.parametrize("model", MODELS)
def test_local_result_equals_a_bare_inference_session(runtime: EdgeRuntime, repository: Path, model: str) -> None:
    inputs = sample_inputs(model, batch=3, seed=4)
    result = runtime.infer_sync(model, inputs)
    assert (result.served_by, result.reason, result.offloaded) == ("local", "no_gateway", False)
    assert result.latency_ms > 0
    assert_same_outputs(result.outputs, local_outputs(repository, model, inputs))


async def test_async_infer_equals_a_bare_inference_session(repository: Path) -> None:
    async with EdgeRuntime(edge_config(repository, models=["anomaly", "vocab"])) as rt:
        assert set(rt.local_models()) == {"anomaly", "vocab"}
        for model in ("anomaly", "vocab"):
            inputs = sample_inputs(model, batch=2, seed=8)
            result = await rt.infer(model, inputs, budget_ms=50)
            assert result.served_by == "local"
            assert_same_outputs(result.outputs, local_outputs(repository, model, inputs))


def test_models_load_verified_warmed_up_and_with_the_configured_threads(runtime: EdgeRuntime) -> None:
    models = runtime.local_models()
    assert set(models) == set(MODELS) and runtime.refused() == {}
    assert runtime.providers[-1] == "CPUExecutionProvider"
    for name, model in models.items():
        assert runtime.local.predictor.predict(name, 1) is not None  # seeded by the warm-up run
        options = model.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_pinned_providers_are_used_and_a_missing_one_stops_start_up(repository: Path) -> None:
    with EdgeRuntime(edge_config(repository, models=["digits"], providers=["CPUExecutionProvider"])) as rt:
        assert rt.local_models()["digits"].session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(NoBackend, match="NoSuchExecutionProvider"):
        EdgeRuntime(edge_config(repository, providers=["NoSuchExecutionProvider"])).start_sync()


def test_concurrent_callers_share_batches_and_each_gets_its_own_rows(runtime: EdgeRuntime, repository: Path) -> None:
    callers, calls = 8, 4
    inputs = [sample_inputs("vision", batch=1 + i % 2, seed=i) for i in range(callers)]
    wanted = [local_outputs(repository, "vision", x) for x in inputs]
    results: dict[int, list] = {i: [] for i in range(callers)}
    batches = _samples(runtime, "railgate_edge_local_batch_size_count", model="vision")
    barrier = threading.Barrier(callers)

    def caller(i: int) -> None:
        barrier.wait()
        for _ in range(calls):
            results[i].append(runtime.infer_sync("vision", inputs[i]).outputs)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(callers):
        assert len(results[i]) == calls
        for outputs in results[i]:
            assert_same_outputs(outputs, wanted[i])
    runs = _samples(runtime, "railgate_edge_local_batch_size_count", model="vision") - batches
    assert runs < callers * calls  # some calls ran together


async def test_concurrent_coroutines_share_batches(repository: Path) -> None:
    # inline_max_ms 0: every run goes through the pool (vision's ~5 ms runs would anyway)
    async with EdgeRuntime(edge_config(repository, models=["vision"], batching={"inline_max_ms": 0})) as rt:
        inputs = [sample_inputs("vision", batch=1, seed=i) for i in range(12)]
        results = await asyncio.gather(*(rt.infer("vision", x) for x in inputs))
        for x, result in zip(inputs, results, strict=True):
            assert_same_outputs(result.outputs, local_outputs(repository, "vision", x))
        assert _samples(rt, "railgate_edge_local_batch_size_count", model="vision") < len(inputs)


def _block_the_pool(rt: EdgeRuntime) -> threading.Event:
    """Every thread of the runtime's pool busy until the returned event is set."""
    release = threading.Event()
    for _ in range(rt._pool._max_workers):
        rt._pool.submit(release.wait, 30)
    return release


async def test_a_run_shorter_than_the_inline_limit_runs_on_the_loop_not_in_the_pool(repository: Path) -> None:
    """digits runs in ~0.05 ms, under inline_max_ms: its async call never waits for a pool thread."""
    async with EdgeRuntime(edge_config(repository, models=["digits"], batching={"inline_max_ms": 5})) as rt:
        x = sample_inputs("digits", batch=2, seed=3)
        release = _block_the_pool(rt)
        try:
            result = await asyncio.wait_for(rt.infer("digits", x), 10)
        finally:
            release.set()
        assert_same_outputs(result.outputs, local_outputs(repository, "digits", x))


async def test_with_inline_off_an_async_run_waits_for_a_pool_thread(repository: Path) -> None:
    async with EdgeRuntime(edge_config(repository, models=["digits"], batching={"inline_max_ms": 0})) as rt:
        x = sample_inputs("digits", batch=1, seed=3)
        release = _block_the_pool(rt)
        call = asyncio.ensure_future(rt.infer("digits", x))
        try:
            done, _ = await asyncio.wait([call], timeout=0.3)
            assert not done  # it cannot finish while every pool thread is held
        finally:
            release.set()
        assert_same_outputs((await asyncio.wait_for(call, 10)).outputs, local_outputs(repository, "digits", x))


def test_an_inline_limit_below_zero_is_a_config_error(repository: Path) -> None:
    with pytest.raises(ConfigError, match=r"batching\.inline_max_ms: must be >= 0, got -1"):
        edge_config(repository, batching={"inline_max_ms": -1})


class GatedSession:
    """A fake around a real session: its first run waits for ``gate`` (to hold a run in flight)."""

    def __init__(self, session) -> None:
        self.session = session
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.runs: list[list[tuple[int, ...]]] = []

    def run(self, names, feed):
        self.runs.append([a.shape for a in feed.values()])
        if len(self.runs) == 1:
            self.entered.set()
            self.gate.wait(30)
        return self.session.run(names, feed)


def test_calls_of_different_variable_dims_queued_together_run_in_separate_batches(tmp_path: Path) -> None:
    """bytes_identity takes [-1, -1]: two queued calls of 3 and 5 columns cannot be concatenated, so each
    runs in a batch of its own shape and gets its own strings back (before: both failed together)."""
    repo = build_foreign_repository(tmp_path / "repo")
    data = (repo / "bytes_identity" / "2" / "model.onnx").read_bytes()
    manifest = {"bytes_identity": {"file": "bytes_identity/2/model.onnx", "sha256": sha256_hex(data)}}
    (repo / "manifest.json").write_text(json.dumps({"format": 1, "models": manifest}))
    model = load_model(ModelStore(repo).load("bytes_identity"), ["CPUExecutionProvider"], _options())
    gated = GatedSession(model.session)
    model = dataclasses.replace(model, session=gated)
    with ThreadPoolExecutor(2) as pool:
        lane = MicroBatcher(model, BatchPolicy(8, 60.0, (), 1), pool, lambda *a: None)
        wanted = [np.array([[f"{n}-{i}".encode() for i in range(n)]], dtype=object) for n in (2, 3, 5)]
        feeds = [model.prepare({"IN": w})[0] for w in wanted]
        deadline = time.monotonic() + 60
        first = pool.submit(lane.run, feeds[0], 1, deadline)
        assert gated.entered.wait(10)  # the first call's run is in flight: the next two queue up
        results: dict[int, object] = {}

        def call(i: int) -> None:
            try:
                results[i] = lane.run(feeds[i], 1, deadline)["OUT"]
            except Exception as exc:
                results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        _wait_for(lambda: lane.pending() == 2, "both calls queued")
        gated.gate.set()
        first.result(10)
        for t in threads:
            t.join(10)
    for i in (1, 2):
        assert not isinstance(results[i], Exception), results[i]
        assert results[i].tolist() == wanted[i].tolist()
    assert sorted(gated.runs[1:]) == [[(1, 3)], [(1, 5)]]


def _options():
    from edge.engine import session_options

    return session_options(1, 1)


def _wait_for(check, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling a condition, bounded by the deadline


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "takes input\\(s\\) pixels; got none"),
        ({"image": np.zeros((1, 64), np.float32)}, "needs input 'pixels'"),
        ({"pixels": np.zeros((1, 64), np.float64)}, "input 'pixels': dtype float64, expected FP32"),
        ({"pixels": np.zeros((1, 63), np.float32)}, "input 'pixels': shape \\[1, 63\\], expected \\[-1, 64\\]"),
        ({"pixels": np.zeros((0, 64), np.float32)}, "batch size 0 outside 1..256"),
        ({"pixels": [[0.0] * 64]}, "expected a numpy array"),
    ],
)
def test_a_bad_input_is_a_bad_request_naming_it(runtime: EdgeRuntime, inputs: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        runtime.infer_sync("digits", inputs)


def test_bad_policy_and_budget_are_bad_requests(runtime: EdgeRuntime) -> None:
    x = sample_inputs("digits", batch=1)
    with pytest.raises(BadRequest, match="offload policy 'nearest' is not one of auto, local, remote"):
        runtime.infer_sync("digits", x, policy="nearest")
    with pytest.raises(BadRequest, match="budget must be a non-negative number"):
        runtime.infer_sync("digits", x, budget_ms=float("nan"))


def test_a_model_not_on_the_device_fails_fast_naming_it(repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(repository, tmp_path / "edge", ("digits",))
    with EdgeRuntime(edge_config(repo)) as rt:
        started = time.perf_counter()
        with pytest.raises(ModelUnavailable, match="model 'vision' is not on this device") as caught:
            rt.infer_sync("vision", sample_inputs("vision", batch=1))
        assert time.perf_counter() - started < 0.1
        assert caught.value.status == 503 and "no gateway is configured" in caught.value.message


def test_a_tampered_local_file_is_refused_and_never_run(repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(repository, tmp_path / "edge", ("digits", "anomaly"))
    onnx = repo / "digits" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with EdgeRuntime(edge_config(repo)) as rt:
        assert set(rt.local_models()) == {"anomaly"}
        assert "sha256 of" in rt.refused()["digits"] and "refusing to run it locally" in rt.refused()["digits"]
        with pytest.raises(ModelRefused, match="model 'digits' cannot run on this device \\(model 'digits': sha256"):
            rt.infer_sync("digits", sample_inputs("digits", batch=1), policy="local")
        assert rt.infer_sync("anomaly", sample_inputs("anomaly", batch=1)).served_by == "local"
        assert _samples(rt, "railgate_edge_local_model", model="digits") == 0


def test_a_model_without_a_recorded_hash_is_refused(repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(repository, tmp_path / "edge", ("digits",))
    (repo / "manifest.json").write_text(json.dumps({"format": 1, "models": {}}))
    with EdgeRuntime(edge_config(repo)) as rt:
        assert rt.local_models() == {}
        assert "no sha256 recorded" in rt.refused()["digits"]


async def test_infer_sync_on_the_event_loop_is_refused_rather_than_deadlocking(repository: Path) -> None:
    async with EdgeRuntime(edge_config(repository, models=["digits"])) as rt:
        with pytest.raises(RuntimeError, match="use `await infer\\(\\)` there"):
            rt.infer_sync("digits", sample_inputs("digits", batch=1))


def test_every_decision_is_counted_with_its_reason(runtime: EdgeRuntime) -> None:
    before = _samples(runtime, "railgate_edge_decisions_total", model="digits", where="local", reason="policy_local")
    runtime.infer_sync("digits", sample_inputs("digits", batch=1), policy="local")
    after = _samples(runtime, "railgate_edge_decisions_total", model="digits", where="local", reason="policy_local")
    assert after == before + 1
    assert b"railgate_edge_decisions_total" in runtime.metrics.render()


def _samples(runtime: EdgeRuntime, name: str, **labels: str) -> float:
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0
