"""Signed model manifests (railcore/signing.py): pure bytes in, a key id or a refusal out; the keys' config."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge import parse_edge_config
from gateway.config import parse_config
from railcore.settings import ConfigError
from railcore.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    BadKey,
    ManifestError,
    ManifestFile,
    ModelManifest,
    SignatureError,
    SignatureFault,
    SigningKey,
    TrustedKeys,
    key_id,
    load_signing_key,
    parse_public_key,
    verify_signature,
)

ROOT = Path(__file__).resolve().parents[2]
OLD = SigningKey.from_bytes(bytes(range(32)))
NEW = SigningKey.from_bytes(bytes(range(32, 64)))
MANIFEST = ModelManifest(
    "digits", "1", (ManifestFile("1/model.onnx", "a" * 64, 21083), ManifestFile("config.pbtxt", "b" * 64, 412))
)
DATA = MANIFEST.to_bytes()


def signed(key: SigningKey, data: bytes = DATA) -> tuple[str, str]:
    headers = key.sign(data)
    return headers[KEY_ID_HEADER], headers[SIGNATURE_HEADER]


def flip(data: bytes, at: int = 10) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


# -- the manifest's bytes ---------------------------------------------------------------------------


def test_the_manifest_is_canonical_json_with_sorted_keys_and_no_spaces() -> None:
    assert DATA == (
        b'{"files":[{"name":"1/model.onnx","sha256":"' + b"a" * 64 + b'","size":21083},'
        b'{"name":"config.pbtxt","sha256":"' + b"b" * 64 + b'","size":412}],"format":1,"model":"digits","version":"1"}'
    )
    assert ModelManifest.from_bytes(DATA) == MANIFEST


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (json.dumps(json.loads(DATA), indent=1).encode(), "canonical"),  # same content, other spelling
        (DATA.replace(b'"format":1', b'"extra":0,"format":1'), "canonical"),
        (DATA.replace(b'"format":1', b'"format":2'), "format 1"),
        (DATA.replace(b"a" * 64, b"A" * 64), "hex sha256"),
        (DATA.replace(b'"size":412', b'"size":-1'), "hex sha256 and a size"),
        (DATA.replace(b'"version":"1"', b'"version":"one"'), "numeric version"),
        (b"not json", "not JSON"),
    ],
)
def test_anything_but_a_canonical_manifest_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        ModelManifest.from_bytes(data)


def test_a_file_the_manifest_does_not_list_is_an_error() -> None:
    assert MANIFEST.file("config.pbtxt").size == 412
    with pytest.raises(ManifestError, match=r"lists no '2/model\.onnx'"):
        MANIFEST.file("2/model.onnx")


# -- signatures -------------------------------------------------------------------------------------


def test_a_signature_verifies_over_exactly_the_bytes_signed() -> None:
    signature = OLD.private.sign(DATA)
    assert verify_signature(OLD.public_bytes, DATA, signature)
    assert not verify_signature(OLD.public_bytes, flip(DATA), signature)
    assert not verify_signature(OLD.public_bytes, DATA, flip(signature))
    assert not verify_signature(NEW.public_bytes, DATA, signature)
    assert not verify_signature(OLD.public_bytes, DATA, b"short")


def test_a_pinned_key_verifies_and_names_itself() -> None:
    assert TrustedKeys.parse([OLD.public_text()]).verify(DATA, *signed(OLD)) == OLD.key_id


@pytest.mark.parametrize("signer", [OLD, NEW], ids=["old", "new"])
def test_either_key_pinned_during_a_rotation_verifies(signer: SigningKey) -> None:
    trusted = TrustedKeys.parse([OLD.public_text(), NEW.public_bytes.hex()])
    assert trusted.verify(DATA, *signed(signer)) == signer.key_id


def test_a_signature_without_a_key_id_is_tried_against_every_pinned_key() -> None:
    trusted = TrustedKeys.parse([OLD.public_text(), NEW.public_text()])
    assert trusted.verify(DATA, None, signed(NEW)[1]) == NEW.key_id


@pytest.mark.parametrize(
    ("key_id_", "signature", "fault", "message"),
    [
        (None, None, SignatureFault.UNSIGNED, "unsigned"),
        (NEW.key_id, signed(NEW)[1], SignatureFault.UNTRUSTED_KEY, f"signed by key {NEW.key_id}, not a pinned key"),
        (OLD.key_id, signed(OLD, flip(DATA))[1], SignatureFault.BAD_SIGNATURE, "does not match its bytes"),
        (OLD.key_id, signed(NEW)[1], SignatureFault.BAD_SIGNATURE, "does not match its bytes"),  # a lying key id
        (OLD.key_id, "not base64!", SignatureFault.BAD_SIGNATURE, "not base64 of 64 bytes"),
        (OLD.key_id, base64.b64encode(b"x" * 63).decode(), SignatureFault.BAD_SIGNATURE, "not base64 of 64 bytes"),
    ],
    ids=["unsigned", "untrusted-key", "tampered-bytes", "other-key-same-id", "not-base64", "short"],
)
def test_a_manifest_that_does_not_verify_is_refused_with_its_fault(
    key_id_: str | None, signature: str | None, fault: SignatureFault, message: str
) -> None:
    with pytest.raises(SignatureError, match=message) as caught:
        TrustedKeys.parse([OLD.public_text()]).verify(DATA, key_id_, signature)
    assert caught.value.fault == fault


def test_a_tampered_file_and_manifest_together_fail_the_signature() -> None:
    forged = dataclasses.replace(MANIFEST, files=(ManifestFile("1/model.onnx", "c" * 64, 21083), MANIFEST.files[1]))
    with pytest.raises(SignatureError) as caught:
        TrustedKeys.parse([OLD.public_text()]).verify(forged.to_bytes(), *signed(OLD))
    assert caught.value.fault == SignatureFault.BAD_SIGNATURE


def test_no_pinned_keys_is_falsy() -> None:
    assert not TrustedKeys.parse([]) and TrustedKeys.parse([OLD.public_text()])


# -- keys -------------------------------------------------------------------------------------------


def test_a_public_key_reads_the_same_from_base64_and_hex() -> None:
    assert parse_public_key(OLD.public_text()) == parse_public_key(OLD.public_bytes.hex()) == OLD.public_bytes
    assert key_id(OLD.public_bytes) == OLD.key_id and len(OLD.key_id) == 16


@pytest.mark.parametrize("text", ["", "abc", base64.b64encode(b"x" * 31).decode(), "zz" * 32])
def test_anything_but_32_key_bytes_is_not_a_public_key(text: str) -> None:
    with pytest.raises(BadKey, match="expected 32 bytes as base64 or 64 hex digits"):
        parse_public_key(text)


def test_a_private_key_file_may_be_pem_or_32_raw_bytes(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(OLD.private_pem())
    (tmp_path / "key.raw").write_bytes(bytes(range(32)))
    assert load_signing_key(tmp_path / "key.pem").key_id == load_signing_key(tmp_path / "key.raw").key_id == OLD.key_id


def test_a_key_file_that_is_no_ed25519_key_is_named_in_the_error(tmp_path: Path) -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases = {"rsa.pem": (rsa_pem, "not an Ed25519 private key"), "junk": (b"junk", "neither a PEM")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadKey, match=message) as caught:
            load_signing_key(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read .*: No such file or directory"), (b"junk", "neither a PEM Ed25519 private key")],
)
def test_a_bad_signing_key_file_stops_the_gateway_naming_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "signing.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({"artifacts": {"signing_key_file": str(path)}})
    line = str(caught.value)
    assert line.startswith("artifacts.signing_key_file: ") and str(path) in line and "\n" not in line


def test_a_readable_signing_key_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "signing.pem").write_bytes(OLD.private_pem())
    config = parse_config({"artifacts": {"signing_key_file": str(tmp_path / "signing.pem")}})
    assert config.artifacts.signing_key_file == str(tmp_path / "signing.pem")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([OLD.public_text(), "nope"], r"sync.trusted_keys\[1\]: 'nope'... is not an Ed25519 public key"),
        ([OLD.public_text(), OLD.public_bytes.hex()], r"sync.trusted_keys\[1\]: the same key is listed twice"),
    ],
)
def test_a_bad_pinned_key_stops_the_device_naming_it(keys: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_edge_config({"sync": {"trusted_keys": keys}})


def test_two_pinned_keys_parse() -> None:
    config = parse_edge_config({"sync": {"trusted_keys": [OLD.public_text(), NEW.public_bytes.hex()]}})
    assert len(TrustedKeys.parse(config.sync.trusted_keys).by_id) == 2


def test_railgate_keys_signing_writes_a_key_the_gateway_loads_and_prints_its_public_key(tmp_path: Path) -> None:
    out = tmp_path / "signing.pem"
    command = [sys.executable, "-m", "gateway.cli", "keys", "signing", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = load_signing_key(out)
    assert key.public_text() in done.stdout and key.key_id in done.stdout
    assert out.stat().st_mode & 0o077 == 0  # readable by its owner only
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "File exists" in again.stderr and load_signing_key(out).key_id == key.key_id
