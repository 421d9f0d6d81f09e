"""Plain HTTP or insecure gRPC to a hub outside loopback logs one warning, when its client is made."""

from __future__ import annotations

import logging

import pytest

from gateway.backends.triton import hub_backend
from gateway.config import HubSpec
from railcore.tls import ClientTLS


@pytest.mark.parametrize(
    ("url", "protocol", "tls", "warned"),
    [
        ("http://10.1.2.3:8000", "http", None, True),
        ("http://hub.example.com:8000", "http", None, True),
        ("10.1.2.3:8001", "grpc", None, True),
        ("grpc://hub.example.com:8001", "grpc", None, True),
        ("http://127.0.0.1:8000", "http", None, False),
        ("http://localhost:8000", "http", None, False),
        ("127.0.0.1:8001", "grpc", None, False),
        ("https://10.1.2.3:8443", "http", ClientTLS(), False),
        ("https://10.1.2.3:8443", "http", None, False),  # https with the system's trust store
        ("10.1.2.3:8001", "grpc", ClientTLS(), False),
    ],
)
def test_a_plaintext_hub_off_the_host_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, url: str, protocol: str, tls: ClientTLS | None, warned: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="railgate.hub")
    hub_backend(HubSpec(name="far", url=url, protocol=protocol, tls=tls))
    lines = [r.getMessage() for r in caplog.records if "event=hub_plaintext" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines
    if warned:
        assert "hub=far" in lines[0] and url in lines[0]
