"""Lay out the runtime copy of a Triton model repository that the dev hub serves (reading it is
``railcore.repository``'s job).

The source repository is for the official Triton container (``platform: "onnxruntime_onnx"``).
The bundled tritonserver lacks that backend, so each model is re-declared for the Python backend
with the same tensors, ``max_batch_size``, dynamic batcher, version policy and ``model_warmup``,
and runs ``hub/python_model.py``. Every version folder is laid out, and the model's ``warmup/``
folder is copied too: Triton runs ``model_warmup`` itself at load, and a sample's
``input_data_file`` names a file there (a model whose warm-up file is missing fails to load).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from google.protobuf import text_format

from railcore.repository import ModelConfig, RepositoryModel

_MODEL_PY = Path(__file__).with_name("python_model.py")


def write_runtime_repository(models: list[RepositoryModel], target: Path, intra_op_threads: int = 1) -> None:
    """Write the Python-backend copy of ``models`` under ``target`` (ONNX files are linked, not copied)."""
    for model in models:
        config = ModelConfig()
        config.CopyFrom(model.config)
        config.name = model.name
        config.ClearField("platform")
        config.backend = "python"
        config.parameters["intra_op_threads"].string_value = str(intra_op_threads)
        directory = target / model.name
        directory.mkdir(parents=True)
        (directory / "config.pbtxt").write_text(text_format.MessageToString(config))
        warmup = model.directory / "warmup"
        if warmup.is_dir():
            shutil.copytree(warmup, directory / "warmup")
        for version in model.versions:
            onnx_path = model.directory / version / "model.onnx"
            if not onnx_path.is_file():
                continue
            (directory / version).mkdir()
            os.symlink(onnx_path.resolve(), directory / version / "model.onnx")
            shutil.copyfile(_MODEL_PY, directory / version / "model.py")
