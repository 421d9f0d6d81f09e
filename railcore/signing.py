"""Signed model manifests: Ed25519 over canonical JSON; the gateway signs, the edge device verifies.

What is signed is one model's manifest, as canonical JSON (sorted keys, no spaces, ASCII only)::

    {"files":[{"name":"1/model.onnx","sha256":"…","size":1234},{"name":"config.pbtxt","sha256":"…","size":56}],
     "format":1,"model":"digits","version":"1"}

The gateway serves those exact bytes as the body of ``GET /v1/models/{m}/manifest`` and the signature
detached beside them (``X-Manifest-Signature``: base64 of the 64-byte signature, ``X-Manifest-Key-Id``:
the signer's key id). The device checks the signature over the bytes it received *before* parsing
them, and only then trusts the hashes inside to check the files it downloads: a file and a manifest
tampered with together still fail, since nobody without the private key can sign the new bytes.

A key id is the first 8 bytes of sha256(raw 32-byte public key), in hex. It only picks which pinned
key to try; it authenticates nothing. Everything here is pure (bytes in, values or exceptions out)
except ``load_signing_key``, which reads the one file it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = 1
SIGNATURE_HEADER = "X-Manifest-Signature"
KEY_ID_HEADER = "X-Manifest-Key-Id"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class BadKey(ValueError):
    """A key file or key text that is not an Ed25519 key (the message names it)."""


class ManifestError(ValueError):
    """Manifest bytes that are not a well-formed model manifest."""


class SignatureFault(StrEnum):
    UNSIGNED = "unsigned"
    UNTRUSTED_KEY = "untrusted_key"
    BAD_SIGNATURE = "bad_signature"


class SignatureError(Exception):
    """Manifest bytes whose signature does not verify against the pinned keys."""

    def __init__(self, fault: SignatureFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True, slots=True)
class ManifestFile:
    name: str  # relative to the model's folder: "config.pbtxt", "<version>/model.onnx"
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """What the gateway vouches for about one model: its version and each file's hash and size."""

    model: str
    version: str
    files: tuple[ManifestFile, ...]

    def file(self, name: str) -> ManifestFile:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ManifestError(f"the manifest of {self.model!r} lists no {name!r}")

    def to_bytes(self) -> bytes:
        files = [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files]
        return canonical_json({"format": FORMAT, "model": self.model, "version": self.version, "files": files})

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelManifest:
        """Parse manifest bytes; ManifestError when they are not exactly a canonical manifest."""
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"the manifest is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ManifestError(f"the manifest is not a format {FORMAT} object")
        model, version, files = raw.get("model"), raw.get("version"), raw.get("files")
        if not isinstance(model, str) or not isinstance(version, str) or not version.isdigit():
            raise ManifestError("the manifest needs a model name and a numeric version string")
        if not isinstance(files, list) or not files:
            raise ManifestError("the manifest lists no files")
        entries = []
        for f in files:
            ok = isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("sha256"), str)
            if not ok or not _SHA256.fullmatch(f["sha256"]) or type(f.get("size")) is not int or f["size"] < 0:
                raise ManifestError(f"manifest file entry {f!r} needs a name, a hex sha256 and a size")
            entries.append(ManifestFile(f["name"], f["sha256"], f["size"]))
        manifest = cls(model, version, tuple(entries))
        if manifest.to_bytes() != data:  # one spelling only: what is parsed is what was signed
            raise ManifestError("the manifest is not in canonical form (or carries unknown keys)")
        return manifest


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:8].hex()


def parse_public_key(text: str) -> bytes:
    """A raw 32-byte Ed25519 public key from its hex (64 digits) or base64 spelling."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if _HEX_KEY.fullmatch(text) else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise BadKey(f"{text[:16]!r}... is not an Ed25519 public key (expected 32 bytes as base64 or 64 hex digits)")
    return raw


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of exactly ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys a device pins, by key id (two during a rotation: the old and the new)."""

    by_id: Mapping[str, bytes]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> TrustedKeys:
        keys = [parse_public_key(t) for t in texts]
        return cls({key_id(k): k for k in keys})

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def verify(self, data: bytes, signer: str | None, signature: str | None) -> str:
        """The id of the pinned key that signed ``data``; SignatureError (with its fault) otherwise."""
        if not signature:
            raise SignatureError(SignatureFault.UNSIGNED, "the manifest is unsigned and trusted keys are pinned")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 64:
            raise SignatureError(SignatureFault.BAD_SIGNATURE, "the manifest's signature is not base64 of 64 bytes")
        if signer is None:
            candidates = list(self.by_id)
        elif signer in self.by_id:
            candidates = [signer]
        else:
            pinned = ", ".join(sorted(self.by_id))
            raise SignatureError(
                SignatureFault.UNTRUSTED_KEY, f"the manifest is signed by key {signer}, not a pinned key ({pinned})"
            )
        for candidate in candidates:
            if verify_signature(self.by_id[candidate], data, raw):
                return candidate
        raise SignatureError(
            SignatureFault.BAD_SIGNATURE,
            f"the manifest's signature (key {signer or '?'}) does not match its bytes: tampered with on the way",
        )


NO_KEYS = TrustedKeys({})  # a device that pins none: manifests are taken unsigned, hash-only


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The gateway's Ed25519 private key."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "the key") -> SigningKey:
        """A PEM (PKCS#8) Ed25519 private key, or the raw 32 bytes of one."""
        if len(data) == 32:
            return cls(Ed25519PrivateKey.from_private_bytes(data))
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise BadKey(f"{name} is neither a PEM Ed25519 private key nor 32 raw bytes") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadKey(f"{name} is a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id(self.public_bytes)

    def public_text(self) -> str:
        """The public key as a device pins it (base64 of the raw 32 bytes)."""
        return base64.b64encode(self.public_bytes).decode()

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> dict[str, str]:
        """The detached signature headers for ``data``."""
        signature = base64.b64encode(self.private.sign(data)).decode()
        return {SIGNATURE_HEADER: signature, KEY_ID_HEADER: self.key_id}


def load_signing_key(path: str | Path) -> SigningKey:
    """Read the gateway's signing key file; BadKey naming the file when it is unreadable or no key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadKey(f"cannot read {path}: {exc.strerror or exc}") from None
    return SigningKey.from_bytes(data, str(path))
