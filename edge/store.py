"""The device's copy of the model repository: verified reads and crash-safe writes.

Same layout as the gateway's (``<model>/config.pbtxt``, ``<model>/<version>/model.onnx``, ``manifest.json``),
so a repository built by ``railgate models build`` can be copied onto a device as is. ``manifest.json``
is the record of trust: a model runs locally only when the sha256 of its file equals the one recorded
there (and its config's, when recorded). The session is built from the very bytes that were hashed,
never re-read from disk afterwards.

Writes are crash-safe: new files are written beside their target as ``.<name>.<token>.part``, fsynced,
then moved in with ``os.replace`` (config, then model, then the manifest, each atomic). A crash at any
point leaves either the old state or a file whose hash disagrees with the manifest, which is refused
until the next sync repairs it; a ``.part`` file is never loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import ModelRefused
from railcore.catalog import ModelInfo
from railcore.errors import ModelNotFound
from railcore.repository import RepositoryError, RepositoryModel, model_info, parse_config

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
_LEGACY_LOCK = ".sync.lock"  # where runtimes before the directory lock kept theirs


class StoreBusy(Exception):
    """Another process is writing to the same repository (a sync is running)."""


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A model whose bytes matched their recorded sha256, ready to become an ONNX Runtime session."""

    name: str
    version: str
    info: ModelInfo
    onnx: bytes
    sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file beside it, fsync, rename, fsync the directory."""
    part = part_path(path)
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    fsync_directory(path.parent)


def part_path(target: Path) -> Path:
    """Where a new version of ``target`` is written before it is moved in (same directory: same filesystem)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


class ModelStore:
    """The local repository at ``root``: which models it holds, their verified bytes, and atomic commits."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {"format": 1, "models": {}}
        except (OSError, ValueError) as exc:
            raise ModelRefused(f"cannot read {path}: {exc}; no local model can be verified") from exc
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ModelRefused(f"{path} has no 'models' object; no local model can be verified")
        return data

    def names(self) -> list[str]:
        """Models present on disk (a folder with a config.pbtxt), verified or not."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())

    def entry(self, model: str) -> dict[str, Any] | None:
        entry = self.manifest()["models"].get(model)
        return entry if isinstance(entry, dict) else None

    def load(self, model: str) -> VerifiedModel:
        """The model's verified bytes and metadata. ModelNotFound if absent, ModelRefused if it fails a check."""
        directory = self.root / model
        if not (directory / CONFIG_FILE).is_file():
            raise ModelNotFound(f"model {model!r} is not in the local repository {self.root}")
        entry = self.entry(model)
        if entry is None or not isinstance(entry.get("sha256"), str):
            raise ModelRefused(
                f"model {model!r}: no sha256 recorded in {self.root / MANIFEST}; refusing to run an unverified "
                "model (sync it from the gateway, or copy the repository with its manifest)"
            )
        version = self._version(model, entry)
        path = directory / version / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelRefused(f"model {model!r}: cannot read {path}: {exc.strerror}") from exc
        digest = sha256_hex(data)
        if digest != entry["sha256"]:
            raise ModelRefused(
                f"model {model!r}: sha256 of {path} is {digest}, but {MANIFEST} records {entry['sha256']}; "
                "refusing to run it locally"
            )
        config_path = directory / CONFIG_FILE
        expected_config = entry.get("config_sha256")
        if expected_config is not None:
            actual = sha256_hex(config_path.read_bytes())
            if actual != expected_config:
                raise ModelRefused(
                    f"model {model!r}: sha256 of {config_path} is {actual}, but {MANIFEST} records {expected_config}; "
                    "refusing to run it locally"
                )
        return self.verify(model, version, data, digest, config_path)

    def verify(self, model: str, version: str, onnx: bytes, sha256: str, config_path: Path) -> VerifiedModel:
        """Metadata for ``onnx`` from the config at ``config_path`` (ModelRefused when it is broken)."""
        try:
            config = parse_config(config_path)
            if config.name and config.name != model:
                raise RepositoryError(f"{config_path}: name {config.name!r} differs from model {model!r}")
            if not config.input or not config.output:
                raise RepositoryError(f"{config_path}: needs explicit input and output tensors")
            info = model_info(RepositoryModel(model, self.root / model, config, (version,)))
        except RepositoryError as exc:
            raise ModelRefused(f"model {model!r}: {exc}") from exc
        return VerifiedModel(model, version, info, onnx, sha256)

    def _version(self, model: str, entry: dict[str, Any]) -> str:
        """The version the manifest points at (``file: <model>/<version>/model.onnx``)."""
        parts = Path(str(entry.get("file", f"{model}/1/{MODEL_FILE}"))).parts
        if len(parts) != 3 or parts[0] != model or not parts[1].isdigit() or parts[2] != MODEL_FILE:
            raise ModelRefused(
                f"model {model!r}: manifest file {entry.get('file')!r} is not {model}/<version>/model.onnx"
            )
        return parts[1]

    def version(self, model: str) -> str | None:
        """The version the manifest records for ``model``, unverified (None: none recorded, or unreadable)."""
        try:
            entry = self.entry(model)
            return None if entry is None else self._version(model, entry)
        except ModelRefused:
            return None

    def model_path(self, model: str, version: str) -> Path:
        return self.root / model / version / MODEL_FILE

    def config_path(self, model: str) -> Path:
        return self.root / model / CONFIG_FILE

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive right to write this repository (an advisory lock: a CLI sync beside a running edge).

        The lock is taken on the repository directory itself, so no lock file is ever left in it: the
        repository holds model files and the manifest only (a build's tree digest stays the same after
        an edge ran over it). An older runtime's ``.sync.lock`` is removed under the lock.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusy(f"another sync is writing {self.root}") from None
            try:
                (self.root / _LEGACY_LOCK).unlink(missing_ok=True)
                self._remove_parts()  # left by a crash: never loaded, and nobody else writes now
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remove_parts(self) -> None:
        for part in self.root.glob("**/.*.part"):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def commit(
        self,
        model: str,
        version: str,
        onnx_part: Path | None,
        config_part: Path,
        sha256: str,
        config_sha256: str,
        source: str,
        signed_by: str | None = None,
    ) -> None:
        """Move verified, fsynced part files in, then record them in the manifest (call under ``writing``).

        ``onnx_part`` None: only the config changed; the model file stays. ``signed_by``: the id of the
        pinned key whose signature the gateway's manifest carried (None: synced hash-only).
        """
        model_path = self.model_path(model, version)
        config_path = self.config_path(model)
        os.replace(config_part, config_path)
        if onnx_part is not None:
            os.replace(onnx_part, model_path)
            fsync_directory(model_path.parent)
        fsync_directory(config_path.parent)
        manifest = self.manifest()
        # A fresh entry: what a build manifest said about an older version (tensors, metrics) no longer holds.
        manifest["models"][model] = {
            "name": model,
            "file": f"{model}/{version}/{MODEL_FILE}",
            "sha256": sha256,
            "config_sha256": config_sha256,
            "source": source,
            "signed_by": signed_by,
            "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self.root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
