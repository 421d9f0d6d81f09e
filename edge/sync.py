"""Model sync: pull the device's models from the gateway, verify them, and install them without a gap.

For each model, first ``GET /v1/models/{m}/manifest``: the version and each file's sha256 and size,
signed by the gateway (``railcore.signing``). With ``sync.trusted_keys`` pinned, a manifest that is
unsigned, signed by another key, or whose bytes do not match its signature is refused; with none
pinned, the manifest is taken as the gateway sends it (hash-only, as before signing). Everything after
trusts the manifest only, never a reply's own headers: a file and its manifest tampered with together
fail the signature, a file alone fails its hash.

A model whose files already match the manifest is current and nothing is downloaded. Otherwise
``GET /v1/models/{m}/artifact`` streams the ONNX file into a ``.part`` file beside its target while
hashing it, then ``GET /v1/models/{m}/config.pbtxt``. A hash or size that differs from the manifest's
is refused: the part files are deleted and the current version keeps serving.

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
from enum import StrEnum
from pathlib import Path

import aiohttp

from edge.remote import auth_headers
from edge.store import CONFIG_FILE, MODEL_FILE, ModelStore, StoreBusy, VerifiedModel, part_path, sha256_hex
from railcore.errors import RailgateError
from railcore.signing import (
    KEY_ID_HEADER,
    NO_KEYS,
    SIGNATURE_HEADER,
    ManifestError,
    ManifestFile,
    ModelManifest,
    SignatureError,
    TrustedKeys,
)
from railcore.tls import ClientTLS, https_connector

# The runtime's hook: build what the new version needs; return the callable that puts it in service.
Prepare = Callable[[VerifiedModel], Awaitable[Callable[[], None]]]

_CHUNK = 1 << 20


class Refusal(StrEnum):
    """Why a sync was refused (the ``reason`` label of ``railgate_edge_sync_refusals``)."""

    HASH_MISMATCH = "hash_mismatch"  # a file differs from the manifest's sha256 or size
    BAD_MANIFEST = "bad_manifest"  # not a manifest of this model
    UNSIGNED = "unsigned"  # trusted keys are pinned and the manifest carries no signature
    UNTRUSTED_KEY = "untrusted_key"  # signed, by a key the device does not pin
    BAD_SIGNATURE = "bad_signature"  # the signature does not match the manifest's bytes


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    model: str
    outcome: str  # updated | current | refused | failed
    sha256: str | None  # the version the device now holds (None: none)
    detail: str = ""
    reason: Refusal | None = None  # set when refused
    signed_by: str | None = None  # key id that signed the manifest (None: unsigned, or no keys pinned)

    def line(self) -> str:
        sha = (self.sha256 or "-")[:16]
        signed = f" signed_by={self.signed_by}" if self.signed_by else ""
        return f"{self.model:10s} {self.outcome:8s} sha256={sha}{signed} {self.detail}".rstrip()


class _Refused(Exception):
    """What the gateway sent does not verify (``reason`` says how)."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def sync_models(
    http: aiohttp.ClientSession,
    gateway_url: str,
    store: ModelStore,
    models: tuple[str, ...],
    *,
    timeout_s: float = 30.0,
    current: dict[str, str] | None = None,
    prepare: Prepare | None = None,
    trusted: TrustedKeys = NO_KEYS,
    on_outcome: Callable[[SyncOutcome], None] | None = None,
) -> list[SyncOutcome]:
    """Sync ``models`` one after another. ``current``: sha256 of the versions in service (else hashed from disk);
    ``trusted``: the pinned keys a manifest must be signed by (none: hash-only); ``on_outcome``: told of
    each model's outcome as it comes (a progress line)."""
    loop = asyncio.get_running_loop()
    try:
        with store.writing():
            outcomes = []
            for model in models:
                sha = (current or {}).get(model)
                if sha is None:
                    sha = await loop.run_in_executor(None, _verified_sha, store, model)
                outcomes.append(await sync_model(http, gateway_url, store, model, sha, timeout_s, prepare, trusted))
                if on_outcome is not None:
                    on_outcome(outcomes[-1])
            return outcomes
    except StoreBusy as exc:
        return [SyncOutcome(m, "failed", (current or {}).get(m), str(exc)) for m in models]


def _verified_sha(store: ModelStore, model: str) -> str | None:
    try:
        return store.load(model).sha256
    except RailgateError:
        return None


def verified_manifest(
    model: str, body: bytes, headers: Mapping[str, str], trusted: TrustedKeys
) -> tuple[ModelManifest, str | None]:
    """The manifest in ``body`` and the pinned key that signed it (None: no keys pinned); _Refused otherwise.

    The signature is checked over the bytes as received, before they are parsed.
    """
    signed_by = None
    if trusted:
        try:
            signed_by = trusted.verify(body, headers.get(KEY_ID_HEADER), headers.get(SIGNATURE_HEADER))
        except SignatureError as exc:
            raise _Refused(Refusal(exc.fault.value), str(exc)) from None
    try:
        manifest = ModelManifest.from_bytes(body)
        if manifest.model != model:
            raise ManifestError(f"the manifest is for model {manifest.model!r}, not {model!r}")
        manifest.file(f"{manifest.version}/{MODEL_FILE}")
        manifest.file(CONFIG_FILE)
    except ManifestError as exc:
        raise _Refused(Refusal.BAD_MANIFEST, str(exc)) from None
    return manifest, signed_by


def _check_file(entry: ManifestFile, sha256: str, size: int, what: str) -> None:
    if sha256 != entry.sha256 or size != entry.size:
        raise _Refused(
            Refusal.HASH_MISMATCH,
            f"downloaded {what} has sha256 {sha256} ({size} bytes), its manifest says {entry.sha256} "
            f"({entry.size} bytes)",
        )


async def sync_model(
    http: aiohttp.ClientSession,
    gateway_url: str,
    store: ModelStore,
    model: str,
    current_sha: str | None,
    timeout_s: float,
    prepare: Prepare | None = None,
    trusted: TrustedKeys = NO_KEYS,
) -> SyncOutcome:
    """Bring one model (its ONNX file and its config) up to its manifest (call under ``store.writing()``)."""
    base = gateway_url.rstrip("/")
    parts: list[Path] = []
    signed_by: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with http.get(f"{base}/v1/models/{model}/manifest") as reply:
                if reply.status != 200:
                    return SyncOutcome(model, "failed", current_sha, await _failure(reply, "manifest"))
                manifest, signed_by = verified_manifest(model, await reply.read(), reply.headers, trusted)
            version = manifest.version
            onnx_entry = manifest.file(f"{version}/{MODEL_FILE}")
            config_entry = manifest.file(CONFIG_FILE)
            sha = onnx_entry.sha256
            onnx_current = current_sha == sha and await asyncio.to_thread(store.version, model) == version
            if onnx_current:
                local_config = await asyncio.to_thread(_read_or_none, store.config_path(model))
                if local_config is not None and sha256_hex(local_config) == config_entry.sha256:
                    return SyncOutcome(model, "current", current_sha, signed_by=signed_by)
            onnx_part: Path | None = None
            if not onnx_current:
                target = store.model_path(model, version)
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                onnx_part = part_path(target)
                parts.append(onnx_part)
                async with http.get(f"{base}/v1/models/{model}/artifact") as reply:
                    if reply.status != 200:
                        return SyncOutcome(model, "failed", current_sha, await _failure(reply, "artifact"))
                    got, size = await _download(reply, onnx_part)
                _check_file(onnx_entry, got, size, "artifact")
            async with http.get(f"{base}/v1/models/{model}/config.pbtxt") as reply:
                if reply.status != 200:
                    return SyncOutcome(model, "failed", current_sha, await _failure(reply, "config.pbtxt"))
                config_bytes = await reply.read()
            config_sha = sha256_hex(config_bytes)
            _check_file(config_entry, config_sha, len(config_bytes), CONFIG_FILE)
            config_part = part_path(store.config_path(model))
            parts.append(config_part)
            await asyncio.to_thread(_write_synced, config_part, config_bytes)
            if onnx_part is not None:
                # What gets installed is re-read and re-hashed from the part file: the bytes that are on disk.
                onnx = await asyncio.to_thread(onnx_part.read_bytes)
                if sha256_hex(onnx) != sha:
                    raise _Refused(
                        Refusal.HASH_MISMATCH,
                        f"artifact changed on disk after download (sha256 {sha256_hex(onnx)}, expected {sha})",
                    )
            else:  # only the config changed: the model file in service is the manifest's
                onnx = (await asyncio.to_thread(store.load, model)).onnx
            verified = await asyncio.to_thread(store.verify, model, version, onnx, sha, config_part)
        install = await prepare(verified) if prepare is not None else None
        await asyncio.to_thread(store.commit, model, version, onnx_part, config_part, sha, config_sha, base, signed_by)
        parts.clear()
        if install is not None:
            install()
        detail = f"version {version}" if onnx_part else "config.pbtxt only"
        return SyncOutcome(model, "updated", sha, detail, signed_by=signed_by)
    except _Refused as exc:
        kept = "the current version" if current_sha else "nothing"
        return SyncOutcome(model, "refused", current_sha, f"{exc}; kept {kept}", reason=exc.reason)
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


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def _failure(reply: aiohttp.ClientResponse, what: str) -> str:
    text = (await reply.read())[:300].decode(errors="replace")
    return f"{what}: gateway answered {reply.status}: {text}"


async def _download(reply: aiohttp.ClientResponse, path: Path) -> tuple[str, int]:
    """Stream the body into ``path`` (fsynced); its sha256 and size. A short body raises ClientPayloadError."""
    digest = hashlib.sha256()
    size = 0
    file = await asyncio.to_thread(open, path, "wb")
    try:
        async for chunk in reply.content.iter_chunked(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(file.write, chunk)
        await asyncio.to_thread(_flush, file)
    finally:
        file.close()
    return digest.hexdigest(), size


def _flush(file) -> None:
    file.flush()
    os.fsync(file.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def sync_once(
    gateway_url: str,
    repository: Path,
    models: tuple[str, ...],
    timeout_s: float,
    api_key: str | None = None,
    trusted_keys: tuple[str, ...] = (),
    on_outcome: Callable[[SyncOutcome], None] | None = None,
    tls: ClientTLS | None = None,
) -> list[SyncOutcome]:
    """``railgate edge sync``: one pass over ``models``, no runtime (verify and commit only)."""
    trusted = TrustedKeys.parse(trusted_keys)
    gateway_url, connector = https_connector(gateway_url, tls, "gateway_tls", limit=8, keepalive_timeout=15)
    async with aiohttp.ClientSession(headers=auth_headers(api_key), connector=connector) as http:
        store = ModelStore(repository)
        return await sync_models(
            http, gateway_url, store, models, timeout_s=timeout_s, trusted=trusted, on_outcome=on_outcome
        )
