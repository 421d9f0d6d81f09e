"""Read a Triton model repository: ``<model>/config.pbtxt`` and ``<model>/<version>/model.onnx``.

``config.pbtxt`` is protobuf text of Triton's ``inference.ModelConfig``. Its schema travels with
this package as a serialized descriptor (``model_config.binpb``, taken from Triton's
``model_config.proto``; a test checks it still matches the one ``tritonclient`` ships), so reading
a repository needs ``protobuf`` but not ``tritonclient``: a device installs no Triton client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format

from railcore.catalog import CONFIG_TYPE_TO_TRITON, ModelInfo, TensorMeta

_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(Path(__file__).with_name("model_config.binpb").read_bytes()))
ModelConfig: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("inference.ModelConfig"))
_DATA_TYPE = _POOL.FindEnumTypeByName("inference.DataType")


class RepositoryError(Exception):
    """The model repository is missing, empty or holds a broken model (the message names the path)."""


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    name: str
    directory: Path
    config: ModelConfig
    versions: tuple[str, ...]


def parse_config(path: Path) -> ModelConfig:
    """Parse one config.pbtxt; a syntax error names the file, line and column."""
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
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


def data_type_name(value: int) -> str:
    """A ``DataType`` enum value's name (``TYPE_FP32``)."""
    return _DATA_TYPE.values_by_number[value].name


def model_info(model: RepositoryModel) -> ModelInfo:
    """What the gateway and the edge know of a repository model: its v2 metadata and config."""
    config = model.config
    batch = (-1,) if config.max_batch_size > 0 else ()

    def metas(tensors) -> tuple[TensorMeta, ...]:
        return tuple(
            TensorMeta(t.name, CONFIG_TYPE_TO_TRITON[data_type_name(t.data_type)], batch + tuple(t.dims))
            for t in tensors
        )

    return ModelInfo(
        name=model.name,
        versions=model.versions,
        platform=config.platform or config.backend,
        inputs=metas(config.input),
        outputs=metas(config.output),
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        config=json_format.MessageToDict(config, preserving_proto_field_name=True),
    )
