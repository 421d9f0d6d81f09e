"""Read a Triton model repository and lay out the runtime copy the dev hub serves.

The source repository is for the official Triton container (``platform: "onnxruntime_onnx"``).
The bundled tritonserver lacks that backend, so each model is re-declared for the Python backend
with the same tensors, ``max_batch_size`` and dynamic batcher, and runs ``hub/python_model.py``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

_MODEL_PY = Path(__file__).with_name("python_model.py")


class RepositoryError(Exception):
    """The model repository is missing, empty or holds a broken model (the message names the path)."""


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    name: str
    directory: Path
    config: model_config_pb2.ModelConfig
    versions: tuple[str, ...]


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse one config.pbtxt; a syntax error names the file, line and column."""
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"broken config {path}:{exc}") from exc
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc.strerror}") from exc


def read_repository(repository: Path, only: tuple[str, ...] = ()) -> list[RepositoryModel]:
    """Return the repository's models (all, or those named in ``only``), validated."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist (run `railgate models build`)")
    models = []
    for directory in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = directory / "config.pbtxt"
        if not config_path.is_file():
            continue
        config = parse_config(config_path)
        if config.name and config.name != directory.name:
            raise RepositoryError(f"{config_path}: name {config.name!r} differs from its folder {directory.name!r}")
        versions = tuple(sorted((v.name for v in directory.iterdir() if v.is_dir() and v.name.isdigit()), key=int))
        if not versions or not any((directory / v / "model.onnx").is_file() for v in versions):
            raise RepositoryError(f"{directory}: no <version>/model.onnx")
        if not config.input or not config.output:
            raise RepositoryError(f"{config_path}: needs explicit input and output tensors")
        models.append(RepositoryModel(directory.name, directory, config, versions))
    if not models:
        raise RepositoryError(f"model repository {repository} holds no models (run `railgate models build`)")
    if only:
        known = {m.name for m in models}
        missing = [n for n in only if n not in known]
        if missing:
            raise RepositoryError(
                f"model(s) {', '.join(missing)} not in {repository}; it has {', '.join(sorted(known))}"
            )
        models = [m for m in models if m.name in only]
    return models


def write_runtime_repository(models: list[RepositoryModel], target: Path, intra_op_threads: int = 1) -> None:
    """Write the Python-backend copy of ``models`` under ``target`` (ONNX files are linked, not copied)."""
    for model in models:
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(model.config)
        config.name = model.name
        config.ClearField("platform")
        config.backend = "python"
        config.parameters["intra_op_threads"].string_value = str(intra_op_threads)
        directory = target / model.name
        directory.mkdir(parents=True)
        (directory / "config.pbtxt").write_text(text_format.MessageToString(config))
        for version in model.versions:
            onnx_path = model.directory / version / "model.onnx"
            if not onnx_path.is_file():
                continue
            (directory / version).mkdir()
            os.symlink(onnx_path.resolve(), directory / version / "model.onnx")
            shutil.copyfile(_MODEL_PY, directory / version / "model.py")
