"""TLS from the gateway to its hubs, against real TLS peers: Triton's own gRPC TLS (``--grpc-use-ssl``,
``--grpc-use-ssl-mutual``) and nginx terminating TLS in front of Triton's HTTP port (Triton has no TLS
on HTTP).

The hub clients are driven directly (``hub_backend``), so each failure's exact error is asserted, each
under a bounded timeout; one gateway subprocess then serves tritonclient through both TLS hubs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools.certs import CertSet, issue_certs
from devtools.devstack import GrpcTLS, Hub, Nginx, NginxTLS, nginx_binary, start_hub
from gateway.backends.triton import hub_backend
from gateway.config import HubSpec
from railcore.errors import HubUnreachable
from railcore.tls import ClientTLS
from tests.conftest import GatewayProcess
from tests.samples import sample_inputs
from tests.sysdeps import missing

pytestmark = pytest.mark.hub
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return issue_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def grpc_tls_hub(repository: Path, certs: CertSet) -> Iterator[Hub]:
    """A real tritonserver whose gRPC port takes only mutual TLS (clients need a certificate of the test CA)."""
    tls = GrpcTLS(certs.server.cert, certs.server.key, root_cert=certs.ca, mutual=True)
    hub = start_hub(repository, "tls-grpc", grpc=True, models=("digits",), grpc_tls=tls)
    yield hub
    hub.stop()


def _nginx(name: str, upstream: int, workdir: Path, tls: NginxTLS) -> Nginx:
    binary = nginx_binary()
    if binary is None:
        missing("nginx", "apt-get install -y nginx-light")
    return Nginx(name, binary, upstream, workdir, tls=tls).start()


@pytest.fixture(scope="module")
def https_hub(hub: Hub, certs: CertSet, tmp_path_factory) -> Iterator[Nginx]:
    """nginx terminating TLS (the test CA's server certificate) in front of the session hub's HTTP port."""
    proxy = _nginx(
        "https-hub",
        hub.config.http_port,
        tmp_path_factory.mktemp("nginx"),
        NginxTLS(certs.server.cert, certs.server.key),
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def expired_hub(hub: Hub, certs: CertSet, tmp_path_factory) -> Iterator[Nginx]:
    proxy = _nginx(
        "expired-hub",
        hub.config.http_port,
        tmp_path_factory.mktemp("nginx"),
        NginxTLS(certs.expired.cert, certs.expired.key),
    )
    yield proxy
    proxy.stop()


async def _discover_and_infer(spec: HubSpec) -> np.ndarray:
    backend = hub_backend(spec)
    await backend.start()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            assert await backend.probe(TIMEOUT_S)
            models = await backend.discover()
            assert "digits" in models
            loop = asyncio.get_running_loop()
            outputs = await backend.infer("digits", "", sample_inputs("digits", 2), ["label"], loop.time() + TIMEOUT_S)
            return outputs["label"]
    finally:
        await backend.close()


async def _refusal(spec: HubSpec) -> tuple[bool, str]:
    """(the probe's answer, the discovery's error) against a hub that must refuse us, bounded."""
    backend = hub_backend(spec)
    await backend.start()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            ready = await backend.probe(TIMEOUT_S / 2)
            with pytest.raises(Exception) as caught:
                await backend.discover()
            return ready, str(caught.value)
    finally:
        await backend.close()


def _https_spec(url: str, **tls) -> HubSpec:
    return HubSpec(name="h", url=url, tls=ClientTLS(**tls))


def _grpc_spec(port: int, **tls) -> HubSpec:
    return HubSpec(name="g", url=f"localhost:{port}", protocol="grpc", tls=ClientTLS(**tls) if tls else None)


# -- https:// hubs (nginx terminating TLS in front of Triton) -------------------------------------


async def test_an_https_hub_pinned_to_its_ca_is_discovered_and_serves(https_hub: Nginx, certs: CertSet) -> None:
    labels = await _discover_and_infer(_https_spec(f"https://localhost:{https_hub.port}", ca_file=str(certs.ca)))
    assert labels.shape == (2, 1)


async def test_server_name_is_the_name_checked_whatever_address_is_dialled(https_hub: Nginx, certs: CertSet) -> None:
    url = f"https://127.0.0.1:{https_hub.port}"
    labels = await _discover_and_infer(_https_spec(url, ca_file=str(certs.ca), server_name="localhost"))
    assert labels.shape == (2, 1)
    ready, error = await _refusal(_https_spec(url, ca_file=str(certs.ca), server_name="hub.example"))
    assert not ready
    assert "Hostname mismatch" in error and "hub.example" in error


async def test_an_https_hub_of_another_ca_is_refused_with_a_certificate_error(https_hub: Nginx, certs: CertSet) -> None:
    ready, error = await _refusal(_https_spec(f"https://localhost:{https_hub.port}", ca_file=str(certs.other_ca)))
    assert not ready
    assert "CERTIFICATE_VERIFY_FAILED" in error and "unable to get local issuer certificate" in error


async def test_an_expired_hub_certificate_is_refused_with_a_certificate_error(
    expired_hub: Nginx, certs: CertSet
) -> None:
    ready, error = await _refusal(_https_spec(f"https://localhost:{expired_hub.port}", ca_file=str(certs.ca)))
    assert not ready
    assert "certificate has expired" in error


async def test_an_infer_to_an_untrusted_hub_is_hub_unreachable_not_a_hang(https_hub: Nginx, certs: CertSet) -> None:
    backend = hub_backend(_https_spec(f"https://localhost:{https_hub.port}", ca_file=str(certs.other_ca)))
    await backend.start()
    try:
        loop = asyncio.get_running_loop()
        with pytest.raises(HubUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await backend.infer("digits", "", sample_inputs("digits", 1), ["label"], loop.time() + TIMEOUT_S)
    finally:
        await backend.close()


async def test_a_probe_refused_by_tls_logs_why_once(
    https_hub: Nginx, certs: CertSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="railgate.hub")
    backend = hub_backend(_https_spec(f"https://localhost:{https_hub.port}", ca_file=str(certs.other_ca)))
    await backend.start()
    try:
        assert [await backend.probe(TIMEOUT_S) for _ in range(3)] == [False] * 3
    finally:
        await backend.close()
    lines = [r.getMessage() for r in caplog.records if "event=hub_tls_failed" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "hub=h" in lines[0] and "unable to get local issuer certificate" in lines[0]


# -- gRPC hubs (Triton's own TLS, mutual) ---------------------------------------------------------


async def test_a_grpc_tls_hub_is_served_over_a_secure_channel_with_a_client_certificate(
    grpc_tls_hub: Hub, certs: CertSet
) -> None:
    spec = _grpc_spec(
        grpc_tls_hub.config.grpc_port,
        ca_file=str(certs.ca),
        cert_file=str(certs.client.cert),
        key_file=str(certs.client.key),
    )
    assert (await _discover_and_infer(spec)).shape == (2, 1)


async def test_server_name_overrides_the_grpc_target_name(grpc_tls_hub: Hub, certs: CertSet) -> None:
    files = {"ca_file": str(certs.ca), "cert_file": str(certs.client.cert), "key_file": str(certs.client.key)}
    spec = HubSpec(name="g", url=f"127.0.0.1:{grpc_tls_hub.config.grpc_port}", protocol="grpc",
                   tls=ClientTLS(**files, server_name="hub.example"))  # fmt: skip
    ready, error = await _refusal(spec)
    assert not ready and "UNAVAILABLE" in error


@pytest.mark.parametrize("fault", ["no_client_certificate", "other_ca", "insecure_channel"])
async def test_a_grpc_tls_hub_refuses_clearly_and_in_bounded_time(
    grpc_tls_hub: Hub, certs: CertSet, fault: str
) -> None:
    port = grpc_tls_hub.config.grpc_port
    spec = {
        "no_client_certificate": _grpc_spec(port, ca_file=str(certs.ca)),
        "other_ca": _grpc_spec(port, ca_file=str(certs.other_ca), cert_file=str(certs.client.cert),
                               key_file=str(certs.client.key)),
        "insecure_channel": _grpc_spec(port),
    }[fault]  # fmt: skip
    ready, error = await _refusal(spec)
    assert not ready
    assert "UNAVAILABLE" in error


# -- through the gateway --------------------------------------------------------------------------


def test_the_gateway_serves_tritonclient_through_an_https_hub_and_a_grpc_tls_hub(
    https_hub: Nginx, grpc_tls_hub: Hub, certs: CertSet, tmp_path: Path
) -> None:
    client_files = {"ca_file": str(certs.ca), "cert_file": str(certs.client.cert), "key_file": str(certs.client.key)}
    config = {
        "hubs": [
            {"name": "https-hub", "url": f"https://localhost:{https_hub.port}", "tls": {"ca_file": str(certs.ca)}},
            {"name": "grpc-tls-hub", "url": f"localhost:{grpc_tls_hub.config.grpc_port}", "protocol": "grpc",
             "tls": client_files},
        ],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.2},
    }  # fmt: skip
    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    with GatewayProcess(tmp_path, config).start() as gateway:
        served: set[str] = set()
        deadline = time.monotonic() + 60
        while served != {"https-hub", "grpc-tls-hub"} and time.monotonic() < deadline:  # both up, in turn
            request = urllib.request.Request(
                f"{gateway.url}/v2/models/digits/infer", data=body.encode(), headers={"X-Route-Policy": "round_robin"}
            )
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
                    assert len(json.loads(reply.read())["outputs"]) == 2
                    served.add(reply.headers["X-Served-By"])
            except urllib.error.HTTPError as exc:  # 503 until a hub's first probe and discovery
                assert exc.code == 503, exc.read()
                time.sleep(0.1)  # polling for the hubs to come up, with a deadline
        assert served == {"https-hub", "grpc-tls-hub"}
