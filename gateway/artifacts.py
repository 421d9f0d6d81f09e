"""Model artifacts for edge devices: the ONNX file and config.pbtxt of each exportable model.

    GET /v1/models/{model}/artifact       the model.onnx of the version manifest.json points at
    GET /v1/models/{model}/config.pbtxt   the model's Triton config, as in the repository
    GET /v1/models/{model}/manifest       both files' names, sha256 and sizes, and the version: the
                                          canonical JSON of ``railcore.signing.ModelManifest``, signed
                                          (``X-Manifest-Signature``, ``X-Manifest-Key-Id``) when
                                          ``artifacts.signing_key_file`` is set

The device trusts the manifest's hashes, not the headers of the file replies: with the signature, a
file tampered with on the way (and its manifest with it) is refused by a device that pins the key.

The ONNX file's ETag (and ``X-Model-Sha256``) is the sha256 that ``manifest.json`` recorded when the
repository was built, not a hash of whatever is on disk now: the device hashes what it receives and
refuses a mismatch, so a file corrupted or tampered with on the gateway's disk, or on the way, is
never run on a device. The config's ETag is the hash of its bytes. ``If-None-Match`` with the
current tag answers 304, so a device that is up to date downloads nothing.

Only models named in ``exportable`` are served; any other name is a 404 ``{"error": ...}``, as an
unknown model is. The handlers answer errors themselves, so the routes work in any aiohttp app.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from railcore.signing import ManifestFile, ModelManifest, SigningKey, load_signing_key

_CHUNK = 1 << 20


def add_routes(
    app: web.Application,
    repository: Path,
    exportable: tuple[str, ...],
    prefix: str = "/v1/models",
    signer: SigningKey | None = None,
) -> None:
    """Serve the artifacts of the ``exportable`` models of ``repository`` under ``{prefix}/{model}/``
    (``prefix=""`` for a sub-app mounted at ``/v1/models/``); manifests signed by ``signer`` when given."""
    artifacts = _Artifacts(Path(repository), frozenset(exportable), signer)
    app.router.add_get(prefix + "/{model}/artifact", artifacts.model_file)
    app.router.add_get(prefix + "/{model}/config.pbtxt", artifacts.config_file)
    app.router.add_get(prefix + "/{model}/manifest", artifacts.manifest)


def load_signer(signing_key_file: str | None) -> SigningKey | None:
    """The key ``artifacts.signing_key_file`` names (None: manifests go unsigned); the config check read it first."""
    return load_signing_key(signing_key_file) if signing_key_file else None


class _NotServed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Artifact:
    path: Path
    sha256: str
    version: str


def etag_matches(if_none_match: str | None, sha256: str) -> bool:
    """Whether an If-None-Match header names ``sha256`` (weak or strong tag, or ``*``)."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/").strip('"')
        if tag == sha256:
            return True
    return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Artifacts:
    def __init__(self, repository: Path, exportable: frozenset[str], signer: SigningKey | None = None) -> None:
        self.repository = repository
        self.exportable = exportable
        self.signer = signer
        self._manifest: tuple[tuple[int, int], dict[str, Any]] | None = None

    def _models(self) -> dict[str, Any]:
        """manifest.json's models, re-read only when the file changes."""
        path = self.repository / "manifest.json"
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if self._manifest is None or self._manifest[0] != key:
                self._manifest = (key, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise _NotServed(f"the gateway's {path} cannot be read ({exc}); no artifact can be served") from exc
        models = self._manifest[1].get("models")
        return models if isinstance(models, dict) else {}

    def _artifact(self, model: str) -> _Artifact:
        if model not in self.exportable:
            names = ", ".join(sorted(self.exportable)) or "none"
            raise _NotServed(f"model {model!r} is not exportable from this gateway; exportable: {names}")
        entry = self._models().get(model)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise _NotServed(f"model {model!r} has no sha256 in {self.repository / 'manifest.json'}")
        relative = Path(str(entry.get("file", f"{model}/1/model.onnx")))
        parts = relative.parts
        if len(parts) != 3 or parts[0] != model or not parts[1].isdigit() or parts[2] != "model.onnx":
            raise _NotServed(f"model {model!r}: manifest file {str(relative)!r} is not {model}/<version>/model.onnx")
        path = self.repository / relative
        if not path.is_file():
            raise _NotServed(f"model {model!r}: {relative} is missing from the gateway's repository")
        return _Artifact(path, entry["sha256"], parts[1])

    async def model_file(self, request: web.Request) -> web.StreamResponse:
        try:
            artifact = self._artifact(request.match_info["model"])
        except _NotServed as exc:
            return _error(404, str(exc))
        headers = {
            "ETag": f'"{artifact.sha256}"',
            "X-Model-Sha256": artifact.sha256,
            "X-Model-Version": artifact.version,
            "Cache-Control": "no-cache",
        }
        if etag_matches(request.headers.get("If-None-Match"), artifact.sha256):
            return web.Response(status=304, headers=headers)
        loop = asyncio.get_running_loop()
        try:
            file: BinaryIO = await loop.run_in_executor(None, open, artifact.path, "rb")
        except OSError as exc:
            return _error(404, f"model {request.match_info['model']!r}: cannot open its file: {exc.strerror}")
        try:
            size = await loop.run_in_executor(None, lambda: Path(artifact.path).stat().st_size)
            response = web.StreamResponse(headers={**headers, "Content-Type": "application/octet-stream"})
            response.content_length = size
            await response.prepare(request)
            if request.method != "HEAD":
                left = size  # the file may change under us: never send more than announced
                while left > 0:
                    chunk = await loop.run_in_executor(None, file.read, min(_CHUNK, left))
                    if not chunk:
                        break  # shrank: the client sees a short body and discards it
                    await response.write(chunk)
                    left -= len(chunk)
            await response.write_eof()
            return response
        finally:
            file.close()

    async def config_file(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            artifact = self._artifact(model)
        except _NotServed as exc:
            return _error(404, str(exc))
        path = artifact.path.parents[1] / "config.pbtxt"
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        except OSError as exc:
            return _error(404, f"model {model!r}: cannot read its config.pbtxt: {exc.strerror}")
        sha = hashlib.sha256(data).hexdigest()
        headers = {"ETag": f'"{sha}"', "X-Config-Sha256": sha, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("If-None-Match"), sha):
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, headers={**headers, "Content-Type": "text/plain; charset=utf-8"})

    async def manifest(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            artifact = self._artifact(model)
            manifest = await asyncio.get_running_loop().run_in_executor(None, _model_manifest, model, artifact)
        except _NotServed as exc:
            return _error(404, str(exc))
        body = manifest.to_bytes()
        headers = {"Cache-Control": "no-cache", **(self.signer.sign(body) if self.signer else {})}
        return web.Response(body=body, headers=headers, content_type="application/json")


def _model_manifest(model: str, artifact: _Artifact) -> ModelManifest:
    """The manifest of what the artifact routes serve now: the model file's recorded sha256, the config's bytes."""
    config_path = artifact.path.parents[1] / "config.pbtxt"
    try:
        size = artifact.path.stat().st_size
        config = config_path.read_bytes()
    except OSError as exc:
        raise _NotServed(f"model {model!r}: cannot read its files: {exc.strerror}") from exc
    files = (
        ManifestFile(f"{artifact.version}/model.onnx", artifact.sha256, size),
        ManifestFile("config.pbtxt", hashlib.sha256(config).hexdigest(), len(config)),
    )
    return ModelManifest(model, artifact.version, files)
