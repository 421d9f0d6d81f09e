"""Model sync: pull the device's models from the gateway, verify them, and install them without a gap.

For each model, ``GET /v1/models/{m}/artifact`` with ``If-None-Match: "<sha256 of the verified local
copy>"``: 304 means current; 200 streams the ONNX file into a ``.part`` file beside its target while
hashing it. A hash that differs from the one the gateway declared (``X-Model-Sha256`` / ``ETag``) is
refused: the part file is deleted and the current version keeps serving. Then the config
(``GET /v1/models/{m}/config.pbtxt``), the same way.

The config.pbtxt is copied, not derived from the gateway's ``/v2/models/{m}/config`` JSON: that JSON
describes whichever backend serves the model behind the gateway (a dev hub re-declares every model for
Triton's Python backend), while the file describes the ONNX model itself, and keeps the device's
repository a plain Triton repository read by the same code as the gateway's.

Installing is two-phase, so the old version serves until the new one is ready: ``prepare`` (the
runtime: build and warm up a session from the verified bytes) runs first; only then are the files
moved in (``ModelStore.commit``) and the ``install`` callable it returned swaps the session. Without a
runtime (``railgate edge sync``), the files are verified and committed only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge.remote import auth_headers
from edge.store import ModelStore, StoreBusy, VerifiedModel, part_path, sha256_hex
from railcore.errors import RailgateError

# The runtime's hook: build what the new version needs; return the callable that puts it in service.
Prepare = Callable[[VerifiedModel], Awaitable[Callable[[], None]]]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    model: str
    outcome: str  # updated | current | refused | failed
    sha256: str | None  # the version the device now holds (None: none)
    detail: str = ""

    def line(self) -> str:
        sha = (self.sha256 or "-")[:16]
        return f"{self.model:10s} {self.outcome:8s} sha256={sha} {self.detail}".rstrip()


class _Refused(Exception):
    """The download does not match the hash the gateway declared."""


def declared_sha(headers: Mapping[str, str], header: str) -> str | None:
    """The sha256 a reply declares: its explicit header, else its ETag. A disagreement is refused."""
    explicit = headers.get(header)
    etag = headers.get("ETag")
    etag = etag.removeprefix("W/").strip('"') if etag else None
    if explicit and etag and explicit != etag:
        raise _Refused(f"{header} {explicit} and ETag {etag} disagree")
    return explicit or etag


async def sync_models(
    http: aiohttp.ClientSession,
    gateway_url: str,
    store: ModelStore,
    models: tuple[str, ...],
    *,
    timeout_s: float = 30.0,
    current: dict[str, str] | None = None,
    prepare: Prepare | None = None,
) -> list[SyncOutcome]:
    """Sync ``models`` one after another. ``current``: sha256 of the versions in service (else hashed from disk)."""
    loop = asyncio.get_running_loop()
    try:
        with store.writing():
            outcomes = []
            for model in models:
                sha = (current or {}).get(model)
                if sha is None:
                    sha = await loop.run_in_executor(None, _verified_sha, store, model)
                outcomes.append(await sync_model(http, gateway_url, store, model, sha, timeout_s, prepare))
            return outcomes
    except StoreBusy as exc:
        return [SyncOutcome(m, "failed", (current or {}).get(m), str(exc)) for m in models]


def _verified_sha(store: ModelStore, model: str) -> str | None:
    try:
        return store.load(model).sha256
    except RailgateError:
        return None


async def sync_model(
    http: aiohttp.ClientSession,
    gateway_url: str,
    store: ModelStore,
    model: str,
    current_sha: str | None,
    timeout_s: float,
    prepare: Prepare | None = None,
) -> SyncOutcome:
    """Bring one model (its ONNX file and its config) up to the gateway's version (call under ``store.writing()``)."""
    base = gateway_url.rstrip("/")
    parts: list[Path] = []
    try:
        async with asyncio.timeout(timeout_s):
            headers = {"If-None-Match": f'"{current_sha}"'} if current_sha else {}
            onnx_part: Path | None = None
            async with http.get(f"{base}/v1/models/{model}/artifact", headers=headers) as reply:
                if reply.status not in (200, 304):
                    return SyncOutcome(model, "failed", current_sha, await _failure(reply, "artifact"))
                if reply.status == 200:
                    sha, version = _declared_artifact(reply)
                    target = store.model_path(model, version)
                    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                    onnx_part = part_path(target)
                    parts.append(onnx_part)
                    got = await _download(reply, onnx_part)
                    if got != sha:
                        raise _Refused(f"downloaded artifact has sha256 {got}, the gateway declared {sha}")
            if onnx_part is None:  # 304: the model file is current; its bytes are needed only if the config changed
                local = await asyncio.to_thread(store.load, model)
                sha, version, onnx = local.sha256, local.version, local.onnx
            async with http.get(f"{base}/v1/models/{model}/config.pbtxt") as reply:
                if reply.status != 200:
                    return SyncOutcome(model, "failed", current_sha, await _failure(reply, "config.pbtxt"))
                config_bytes = await reply.read()
                config_sha = sha256_hex(config_bytes)
                declared = declared_sha(reply.headers, "X-Config-Sha256")
                if declared is not None and declared != config_sha:
                    raise _Refused(f"config.pbtxt has sha256 {config_sha}, the gateway declared {declared}")
            if onnx_part is None:
                current_config = await asyncio.to_thread(store.config_path(model).read_bytes)
                if current_config == config_bytes:
                    return SyncOutcome(model, "current", current_sha)
            config_part = part_path(store.config_path(model))
            parts.append(config_part)
            await asyncio.to_thread(_write_synced, config_part, config_bytes)
            if onnx_part is not None:
                # What gets installed is re-read and re-hashed from the part file: the bytes that are on disk.
                onnx = await asyncio.to_thread(onnx_part.read_bytes)
                if sha256_hex(onnx) != sha:
                    raise _Refused(
                        f"artifact changed on disk after download (sha256 {sha256_hex(onnx)}, expected {sha})"
                    )
            verified = await asyncio.to_thread(store.verify, model, version, onnx, sha, config_part)
        install = await prepare(verified) if prepare is not None else None
        await asyncio.to_thread(store.commit, model, version, onnx_part, config_part, sha, config_sha, base)
        parts.clear()
        if install is not None:
            install()
        return SyncOutcome(model, "updated", sha, f"version {version}" if onnx_part else "config.pbtxt only")
    except _Refused as exc:
        kept = "the current version" if current_sha else "nothing"
        return SyncOutcome(model, "refused", current_sha, f"{exc}; kept {kept}")
    except TimeoutError:
        return SyncOutcome(model, "failed", current_sha, f"timed out after {timeout_s:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return SyncOutcome(model, "failed", current_sha, f"{exc.__class__.__name__}: {exc}")
    except RailgateError as exc:  # the new version does not load (or the current one no longer verifies)
        return SyncOutcome(model, "failed", current_sha, exc.message)
    finally:
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _declared_artifact(reply: aiohttp.ClientResponse) -> tuple[str, str]:
    """The sha256 and version a 200 artifact reply declares (refused when missing or malformed)."""
    sha = declared_sha(reply.headers, "X-Model-Sha256")
    if not sha:
        raise _Refused("the gateway declared no sha256 (X-Model-Sha256 / ETag)")
    version = reply.headers.get("X-Model-Version", "1")
    if not version.isdigit():
        raise _Refused(f"X-Model-Version {version!r} is not a version number")
    return sha, version


async def _failure(reply: aiohttp.ClientResponse, what: str) -> str:
    text = (await reply.read())[:300].decode(errors="replace")
    return f"{what}: gateway answered {reply.status}: {text}"


async def _download(reply: aiohttp.ClientResponse, path: Path) -> str:
    """Stream the body into ``path`` (fsynced) and return its sha256. A short body raises ClientPayloadError."""
    digest = hashlib.sha256()
    file = await asyncio.to_thread(open, path, "wb")
    try:
        async for chunk in reply.content.iter_chunked(_CHUNK):
            digest.update(chunk)
            await asyncio.to_thread(file.write, chunk)
        await asyncio.to_thread(_flush, file)
    finally:
        file.close()
    return digest.hexdigest()


def _flush(file) -> None:
    file.flush()
    os.fsync(file.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def sync_once(
    gateway_url: str, repository: Path, models: tuple[str, ...], timeout_s: float, api_key: str | None = None
) -> list[SyncOutcome]:
    """``railgate edge sync``: one pass over ``models``, no runtime (verify and commit only)."""
    async with aiohttp.ClientSession(headers=auth_headers(api_key)) as http:
        return await sync_models(http, gateway_url, ModelStore(repository), models, timeout_s=timeout_s)
