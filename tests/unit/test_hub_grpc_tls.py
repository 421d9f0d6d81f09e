"""The dev hub's gRPC TLS: tritonserver's own flags, and a missing file refused before Triton starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.server import GrpcTLS, HubError, _grpc_tls_args


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    paths = tuple(tmp_path / name for name in ("server.crt", "server.key", "ca.pem"))
    for path in paths:
        path.write_text("pem")
    return paths  # type: ignore[return-value]


def test_server_tls_uses_tritons_grpc_ssl_flags(tmp_path: Path) -> None:
    cert, key, ca = _files(tmp_path)
    assert _grpc_tls_args(GrpcTLS(cert, key)) == [
        f"--grpc-server-cert={cert}", f"--grpc-server-key={key}", "--grpc-use-ssl=true"
    ]  # fmt: skip
    assert _grpc_tls_args(GrpcTLS(cert, key, ca, mutual=True)) == [
        f"--grpc-server-cert={cert}", f"--grpc-server-key={key}", f"--grpc-root-cert={ca}", "--grpc-use-ssl-mutual=true"
    ]  # fmt: skip


def test_a_missing_file_or_a_mutual_hub_without_a_root_is_refused(tmp_path: Path) -> None:
    cert, key, _ = _files(tmp_path)
    with pytest.raises(HubError, match=r"nope\.crt does not exist"):
        _grpc_tls_args(GrpcTLS(tmp_path / "nope.crt", key))
    with pytest.raises(HubError, match="mutual TLS needs root_cert"):
        _grpc_tls_args(GrpcTLS(cert, key, mutual=True))
