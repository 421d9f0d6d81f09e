"""The dev hub's runtime copy of a repository: what Triton needs from the source is all there."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from hub.repository import write_runtime_repository
from models.foreign import WARMUP_A, build_foreign_repository
from railcore.repository import ModelConfig, read_repository


def runtime_copy(tmp_path: Path) -> tuple[Path, Path]:
    source = build_foreign_repository(tmp_path / "source")
    write_runtime_repository(read_repository(source), tmp_path / "runtime")
    return source, tmp_path / "runtime"


def test_every_version_is_laid_out_with_the_python_model(tmp_path: Path) -> None:
    _, runtime = runtime_copy(tmp_path)
    for version in ("1", "2"):
        assert (runtime / "bytes_identity" / version / "model.onnx").is_file()
        assert (runtime / "bytes_identity" / version / "model.py").is_file()
    config = text_format.Parse((runtime / "bytes_identity" / "config.pbtxt").read_text(), ModelConfig())
    assert config.backend == "python" and not config.platform
    assert config.version_policy.HasField("all")


def test_the_warmup_folder_travels_with_the_model_warmup_samples(tmp_path: Path) -> None:
    """Triton runs model_warmup at load: a sample's input_data_file must be in the copy's warmup/."""
    source, runtime = runtime_copy(tmp_path)
    config = text_format.Parse((runtime / "str_math" / "config.pbtxt").read_text(), ModelConfig())
    (sample,) = config.model_warmup
    for name, spec in sample.inputs.items():
        copied = runtime / "str_math" / "warmup" / spec.input_data_file
        assert copied.read_bytes() == (source / "str_math" / "warmup" / spec.input_data_file).read_bytes(), name
    assert (runtime / "str_math" / "warmup" / "A").read_bytes().endswith(WARMUP_A[-1])
    assert not (runtime / "int_math" / "warmup").exists()
