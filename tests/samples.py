"""Sample inputs for the built models and the reference answers: bare ONNX Runtime on the same files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = ("digits", "vision", "anomaly", "vocab")


def sample_inputs(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "vocab":  # known words, an unknown one, and non-ASCII UTF-8
        words = [b"three", b"nine", b"zero", b"eleven", "f\u00fcnf".encode(), b""]
        return {
            "word": np.array([words[i] for i in rng.integers(0, len(words), batch)], dtype=object).reshape(batch, 1)
        }
    shapes = {
        "digits": ("pixels", (64,), 16.0),
        "vision": ("image", (3, 64, 64), 1.0),
        "anomaly": ("window", (128,), 1.0),
    }
    tensor, dims, scale = shapes[name]
    return {tensor: (rng.random((batch, *dims)) * scale).astype(np.float32)}


def local_outputs(repository: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {
        k: (np.vectorize(bytes.decode, otypes=[object])(v) if v.dtype.kind == "O" else v) for k, v in inputs.items()
    }
    outputs = dict(zip(names, session.run(names, feed), strict=True))
    return {k: (np.vectorize(str.encode, otypes=[object])(v) if v.dtype.kind == "O" else v) for k, v in outputs.items()}


def assert_same_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for key, expected in want.items():
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], expected, err_msg=key)


def copy_repository(source: Path, target: Path, models: tuple[str, ...] = MODELS) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in models:
        shutil.copytree(source / name, target / name)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["models"] = {k: v for k, v in manifest["models"].items() if k in models}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target
