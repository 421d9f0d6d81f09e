"""The model repository: deterministic, valid for Triton, and the models do their jobs."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from devtools import procs
from models.spec import IR_VERSION, OPSET
from railcore.repository import read_repository

MODEL_FILES = ("model.onnx", "config.pbtxt", "manifest.json")


def _tree_digest(root: Path) -> dict[str, str]:
    """The build's output files by path and sha256; anything else in the tree (a runtime's stray file) is not the build's."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name in MODEL_FILES
    }


THREADS = {"default-threads": {}, "omp-1": {"OMP_NUM_THREADS": "1"}}


@pytest.fixture(scope="module")
def fresh_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """Both thread settings' full builds, started together (each is one process, mostly on one core),
    each its output tree and its stderr in a file beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    builds = {}
    for name, threads in THREADS.items():
        root = tmp_path_factory.mktemp(name)
        cmd = [sys.executable, "-m", "gateway.cli", "models", "build", "--repository", str(root / "repo")]
        with (root / "stderr").open("wb") as stderr:
            proc = procs.spawn(cmd, env={**env, **threads}, stdout=subprocess.DEVNULL, stderr=stderr)
        builds[name] = proc, root
    yield builds
    for proc, _ in builds.values():
        procs.terminate(proc, timeout_s=0)


# OMP_NUM_THREADS=1 alone changed the trained digits weights (another BLAS split) until training
# was pinned to one thread: a test suite whose earlier test set it rebuilt a different file.
@pytest.mark.parametrize("threads", list(THREADS))
def test_build_is_byte_for_byte_deterministic(fresh_builds: dict, repository: Path, threads: str) -> None:
    proc, root = fresh_builds[threads]
    proc.wait(timeout=300)
    assert proc.returncode == 0, (root / "stderr").read_text(errors="replace")
    built = _tree_digest(root / "repo")
    assert sum(path.endswith("model.onnx") for path in built) == 4, sorted(built)
    assert built == _tree_digest(repository)


def test_manifest_records_each_file_hash(repository: Path, manifest: dict) -> None:
    assert set(manifest["models"]) == {"digits", "vision", "anomaly", "vocab"}
    for name, entry in manifest["models"].items():
        data = (repository / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["description"] and entry["inputs"] and entry["outputs"]


@pytest.mark.parametrize("name", ["digits", "vision", "anomaly", "vocab"])
def test_models_pin_ir_and_opset_and_configs_parse(repository: Path, name: str) -> None:
    model = onnx.load(repository / name / "1" / "model.onnx")
    assert model.ir_version == IR_VERSION
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == OPSET
    (parsed,) = read_repository(repository, (name,))
    assert parsed.config.platform == "onnxruntime_onnx"
    assert parsed.config.max_batch_size > 0
    assert parsed.config.dynamic_batching.preferred_batch_size
    assert [i.name for i in parsed.config.input] == [i.name for i in model.graph.input]
    assert [o.name for o in parsed.config.output] == [o.name for o in model.graph.output]


def test_digits_reaches_its_accuracy_through_onnxruntime(repository: Path, manifest: dict) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)
    session = ort.InferenceSession(str(repository / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"pixels": x_test})
    accuracy = float(np.mean(label[:, 0] == y_test))
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(manifest["models"]["digits"]["metrics"]["heldout_accuracy"], abs=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_anomaly_flags_injected_faults_not_normal_windows(repository: Path) -> None:
    from models.anomaly import faulty_windows, normal_windows

    rng = np.random.default_rng(1234)
    session = ort.InferenceSession(str(repository / "anomaly/1/model.onnx"), providers=["CPUExecutionProvider"])
    faulty = session.run(["anomaly"], {"window": faulty_windows(rng, 400)})[0]
    normal = session.run(["anomaly"], {"window": normal_windows(rng, 400)})[0]
    assert faulty.mean() >= 0.8
    assert normal.mean() <= 0.05


def test_build_into_unwritable_path_names_it(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cmd = [sys.executable, "-m", "gateway.cli", "models", "build", "--repository", str(blocked / "repo")]
    result = procs.run(cmd, timeout_s=120)
    assert result.returncode != 0
    assert str(blocked / "repo") in result.stderr
    assert "Traceback" not in result.stderr


def test_build_reports_a_progress_step_per_model_written(tmp_path: Path) -> None:
    from models.build import build_repository
    from railcore.progress import Progress

    out = io.StringIO()
    progress = Progress("models build", 2, stream=out, clock=lambda: 0.0, tty=False)
    build_repository(tmp_path / "repo", ("vocab", "vision"), progress)  # the two that build in a blink
    assert out.getvalue().splitlines() == [
        "models build 1/2 (50%)  vocab written  elapsed 0.0 s  ETA 0.0 s",
        "models build 2/2 (100%)  vision written  elapsed 0.0 s",
    ]


def test_the_cli_prints_build_progress_to_stderr_and_the_manifest_to_stdout(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "gateway.cli", "models", "build", "--repository", str(tmp_path), "--models", "vocab"]
    result = procs.run(cmd, timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert "models build 1/1 (100%)  vocab written" in result.stderr
    assert "models build done: 1/1 in " in result.stderr
    assert "models build" not in result.stdout and result.stdout.startswith("vocab ")


def test_pinned_models_list_their_opsets_in_one_order_whatever_order_the_converter_chose() -> None:
    """skl2onnx collects the opsets in a set, whose order follows the process's string hash seed:
    1 digits build in 10 to 40 listed ai.onnx.ml first (a script that trains and converts digits
    under PYTHONHASHSEED=53 got it every time)."""
    from onnx import TensorProto, helper

    from models.spec import pin_versions

    def identity(opsets: list[tuple[str, int]]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])

    usual = pin_versions(identity([("", 17), ("ai.onnx.ml", 3)]))
    swapped = pin_versions(identity([("ai.onnx.ml", 3), ("", 17)]))
    assert [o.domain for o in swapped.opset_import] == ["", "ai.onnx.ml"]
    assert swapped.SerializeToString(deterministic=True) == usual.SerializeToString(deterministic=True)
