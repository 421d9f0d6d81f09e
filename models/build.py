"""``railgate models build``: write the Triton model repository and its manifest.

The build is byte-for-byte deterministic: fixed seeds, single-threaded BLAS while training, pinned
ONNX versions listed in one order, and deterministic protobuf serialisation.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from models.spec import ModelSpec, write_model
from railcore.progress import Progress

DEFAULT_REPOSITORY = Path("models/repository")
MODEL_NAMES = ("digits", "vision", "anomaly", "vocab")


class BuildError(Exception):
    """The repository could not be written (the message names the path)."""


def _builders():
    from models import anomaly, digits, vision, vocab

    return {"digits": digits.build, "vision": vision.build, "anomaly": anomaly.build, "vocab": vocab.build}


def _manifest_entry(spec: ModelSpec, sha256: str) -> dict[str, object]:
    entry = asdict(spec)
    entry["inputs"] = [t.as_dict() for t in spec.inputs]
    entry["outputs"] = [t.as_dict() for t in spec.outputs]
    entry["preferred_batch_sizes"] = list(spec.preferred_batch_sizes)
    entry["sha256"] = sha256
    entry["file"] = f"{spec.name}/1/model.onnx"
    return entry


def build_repository(
    repository: Path = DEFAULT_REPOSITORY, names: tuple[str, ...] = MODEL_NAMES, progress: Progress | None = None
) -> dict:
    """Build the named models into ``repository``; return the manifest written beside them.

    ``progress`` (if given) gets a step per model written.
    """
    from threadpoolctl import threadpool_limits

    repository = Path(repository)
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=repository, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BuildError(f"cannot write the model repository at {repository}: {exc.strerror}") from exc
    builders = _builders()
    unknown = sorted(set(names) - set(builders))
    if unknown:
        raise BuildError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(builders)}")
    models: dict[str, object] = {}
    # Multi-threaded BLAS sums in a varying order; one thread makes training reproducible.
    with threadpool_limits(limits=1):
        for name in names:
            spec, model = builders[name]()
            models[name] = _manifest_entry(spec, write_model(repository, spec, model))
            if progress is not None:
                progress.step(f"{name} written")
    manifest = {"format": 1, "models": models}
    tmp = repository / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, repository / "manifest.json")
    return manifest
