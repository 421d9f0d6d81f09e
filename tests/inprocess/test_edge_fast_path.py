"""The local call's cheaper path keeps every check: input shapes against the precomputed spec, runs on the
session's C binding with the wrapper's provider fallback kept, decisions counted per call."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

from edge import EdgeRuntime, ModelUnavailable, parse_edge_config
from edge.engine import _InputSpec, _run, load_model, session_options
from edge.store import ModelStore
from railcore.errors import BadRequest
from tests.samples import assert_same_outputs, local_outputs, sample_inputs

F32 = np.dtype(np.float32)


@pytest.mark.parametrize(
    ("dims", "shape", "fits"),
    [
        ((-1, 64), (1, 64), True),
        ((-1, 64), (7, 64), True),
        ((-1, 64), (1, 63), False),
        ((-1, 64), (64,), False),  # rank 1 against rank 2
        ((-1, 64), (1, 64, 1), False),
        ((-1, 64), (), False),
        ((2, 3), (2, 3), True),  # a fixed first dim is checked too
        ((2, 3), (3, 3), False),
        ((-1, -1), (4, 9), True),  # a variable later dim: the general check
        ((-1, 3, -1), (1, 4, 2), False),
        ((-1, 3, -1), (1, 3, 2), True),
        ((), (), True),  # a scalar input
        ((), (1,), False),
    ],
)
def test_the_precomputed_shape_check_agrees_with_the_dims(dims, shape, fits) -> None:
    spec = _InputSpec.of("x", "FP32", F32, dims)
    assert spec.shape_fits(shape) is fits
    general = len(shape) == len(dims) and all(d == -1 or s == d for s, d in zip(shape, dims, strict=True))
    assert general is fits


def test_a_wrong_shape_is_still_refused_naming_it(repository: Path) -> None:
    model = load_model(ModelStore(repository).load("digits"), ["CPUExecutionProvider"], session_options(1, 1))
    with pytest.raises(BadRequest, match=r"input 'pixels': shape \[1, 64, 1\], expected \[-1, 64\]"):
        model.prepare({"pixels": np.zeros((1, 64, 1), np.float32)})
    with pytest.raises(BadRequest, match=r"input 'pixels': shape \[64\], expected \[-1, 64\]"):
        model.prepare({"pixels": np.zeros(64, np.float32)})


def test_runs_go_to_the_binding_and_give_the_wrappers_outputs(repository: Path) -> None:
    for name in ("digits", "vocab"):  # vocab: string outputs, turned into bytes after the run
        model = load_model(ModelStore(repository).load(name), ["CPUExecutionProvider"], session_options(1, 1))
        assert model.direct
        inputs = sample_inputs(name, batch=2, seed=5)
        feed, _ = model.prepare(inputs)
        outputs, elapsed_ms = _run(model, feed)
        assert elapsed_ms > 0
        assert_same_outputs(outputs, local_outputs(repository, name, inputs))


class FakeBinding:
    """A fake ``_sess`` whose runs fail as an execution provider does (EPFail), to script the fallback."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, names, feed, options):
        self.calls += 1
        raise EPFail("scripted: the execution provider failed")

    def is_webgpu_graph_capture_enabled(self) -> bool:
        return False


class FakeSession:
    """A fake around a real session: the binding is scripted to fail, ``run`` (the wrapper) is the real one."""

    def __init__(self, session) -> None:
        self.real = session
        self._sess = FakeBinding()
        self.wrapper_runs = 0

    def run(self, names, feed):
        self.wrapper_runs += 1
        return self.real.run(names, feed)


def test_an_execution_provider_failure_goes_through_the_wrappers_fallback(repository: Path) -> None:
    model = load_model(ModelStore(repository).load("digits"), ["CPUExecutionProvider"], session_options(1, 1))
    fake = FakeSession(model.session)
    model = dataclasses.replace(model, session=fake)
    assert model.direct  # the fake has a binding: runs try it first
    inputs = sample_inputs("digits", batch=1, seed=2)
    outputs, _ = _run(model, model.prepare(inputs)[0])
    assert (fake._sess.calls, fake.wrapper_runs) == (1, 1)
    assert_same_outputs(outputs, local_outputs(repository, "digits", inputs))


def test_a_session_without_a_binding_or_capturing_graphs_runs_through_the_wrapper(repository: Path) -> None:
    model = load_model(ModelStore(repository).load("digits"), ["CPUExecutionProvider"], session_options(1, 1))

    class NoBinding:
        def __init__(self, real) -> None:
            self.real, self.runs = real, 0

        def run(self, names, feed):
            self.runs += 1
            return self.real.run(names, feed)

    plain = NoBinding(model.session)
    assert not dataclasses.replace(model, session=plain).direct
    capturing = FakeSession(model.session)
    capturing._sess.is_webgpu_graph_capture_enabled = lambda: True  # type: ignore[method-assign]
    assert not dataclasses.replace(model, session=capturing).direct
    _run(dataclasses.replace(model, session=plain), model.prepare(sample_inputs("digits", batch=1))[0])
    assert plain.runs == 1


def test_each_call_counts_its_decision_once(repository: Path) -> None:
    config = parse_edge_config({"repository": str(repository), "models": ["digits"]})
    with EdgeRuntime(config) as rt:
        x = sample_inputs("digits", batch=1)
        labels = {"model": "digits", "where": "local", "reason": "no_gateway"}
        for n in range(1, 4):
            rt.infer_sync("digits", x)
            assert rt.metrics.registry.get_sample_value("railgate_edge_decisions_total", labels) == n
        calls = {"model": "digits", "served": "local", "status": "200"}
        assert rt.metrics.registry.get_sample_value("railgate_edge_calls_total", calls) == 3
        latency = rt.metrics.registry.get_sample_value
        assert latency("railgate_edge_call_latency_seconds_count", {"model": "digits", "served": "local"}) == 3


def test_model_names_a_client_made_up_label_no_metric(repository: Path) -> None:
    """A call for a model neither the device nor the gateway has is counted under "(unknown)": one label
    value in all, however many names clients send (before, each name made a child of its own)."""
    config = parse_edge_config({"repository": str(repository), "models": ["digits"]})
    with EdgeRuntime(config) as rt:
        for i in range(40):
            with pytest.raises(ModelUnavailable):
                rt.infer_sync(f"made-up-{i}", sample_inputs("digits", batch=1))
        rt.infer_sync("digits", sample_inputs("digits", batch=1))
        get = rt.metrics.registry.get_sample_value
        unknown = {"model": "(unknown)", "where": "none", "reason": "unavailable"}
        assert get("railgate_edge_decisions_total", unknown) == 40
        assert get("railgate_edge_calls_total", {"model": "(unknown)", "served": "none", "status": "503"}) == 40
        assert get("railgate_edge_calls_total", {"model": "digits", "served": "local", "status": "200"}) == 1
        text = rt.metrics.render().decode()
        assert "made-up" not in text
        assert len(rt._decision_children) == 2  # (unknown) and digits: bounded
