"""``railgate serve`` with ``listen.tls`` and ``listen.ops``: real sockets, real handshakes, stock clients.

The gateways serve digits from their own ONNX Runtime backend (no hub needed to test a listener).
Certificates are made for each module (devtools/certs.py). Every refusal is awaited with a bounded
timeout: an untrusted or expired peer must be an error, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from devtools.certs import CertSet, issue_certs
from devtools.devstack import ROOT
from edge import EdgeRuntime, parse_edge_config
from edge.sync import sync_once
from railcore.tls import ClientTLS
from tests.conftest import GatewayProcess
from tests.samples import sample_inputs

TIMEOUT_S = 10.0  # every refusal must come well within this


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return issue_certs(tmp_path_factory.mktemp("certs"))


def _config(repository: Path, certs: CertSet, *, mutual: bool = False, ops: bool = True) -> dict:
    tls = {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key)}
    if mutual:
        tls["client_ca_file"] = str(certs.ca)
    listen: dict = {"grpc_port": 0, "tls": tls}
    if ops:
        listen["ops"] = {"port": 0}
    local = {"repository": str(repository), "models": ["digits"]}
    return {"listen": listen, "local": local, "artifacts": {"exportable": ["digits"]}}


@pytest.fixture(scope="module")
def tls_gateway(repository: Path, certs: CertSet, tmp_path_factory) -> Iterator[GatewayProcess]:
    g = GatewayProcess(tmp_path_factory.mktemp("tls"), _config(repository, certs)).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def mtls_gateway(repository: Path, certs: CertSet, tmp_path_factory) -> Iterator[GatewayProcess]:
    g = GatewayProcess(tmp_path_factory.mktemp("mtls"), _config(repository, certs, mutual=True, ops=False)).start()
    yield g
    g.stop()


def _http_client(gateway: GatewayProcess, ca: Path, pair=None) -> httpclient.InferenceServerClient:
    options = {"ca_certs": str(ca)}
    if pair is not None:
        options |= {"certfile": str(pair.cert), "keyfile": str(pair.key)}
    return httpclient.InferenceServerClient(
        f"localhost:{gateway.port}",
        ssl=True,
        ssl_options=options,
        ssl_context_factory=gevent.ssl.create_default_context,
        connection_timeout=TIMEOUT_S,
        network_timeout=TIMEOUT_S,
    )


def _grpc_client(gateway: GatewayProcess, ca: Path, pair=None) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        f"localhost:{gateway.grpc_port}",
        ssl=True,
        root_certificates=str(ca),
        private_key=str(pair.key) if pair else None,
        certificate_chain=str(pair.cert) if pair else None,
    )


def _http_infer(client: httpclient.InferenceServerClient) -> np.ndarray:
    pixels = sample_inputs("digits", 2)["pixels"]
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    return client.infer("digits", [tensor]).as_numpy("label")


def _grpc_infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    pixels = sample_inputs("digits", 2)["pixels"]
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return client.infer("digits", [tensor], client_timeout=TIMEOUT_S).as_numpy("label")


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=TIMEOUT_S) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _pinned(certs: CertSet, pair=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


# -- HTTPS and gRPC over TLS ----------------------------------------------------------------------


def test_the_banner_says_https(tls_gateway: GatewayProcess) -> None:
    assert tls_gateway.url.startswith("https://")


def test_tritonclient_http_with_ssl_infers_through_the_gateway(tls_gateway: GatewayProcess, certs: CertSet) -> None:
    client = _http_client(tls_gateway, certs.ca)
    try:
        assert client.is_server_ready()
        assert _http_infer(client).shape == (2, 1)
    finally:
        client.close()


def test_tritonclient_grpc_with_ssl_infers_through_the_gateway(tls_gateway: GatewayProcess, certs: CertSet) -> None:
    with _grpc_client(tls_gateway, certs.ca) as client:
        assert client.is_server_ready()
        assert _grpc_infer(client).shape == (2, 1)


def test_plain_http_to_the_tls_port_gets_no_answer_but_a_closed_connection(tls_gateway: GatewayProcess) -> None:
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        _get(f"http://127.0.0.1:{tls_gateway.port}/v2/health/ready", None)


def test_a_client_pinned_to_another_ca_gets_a_certificate_error_in_bounded_time(
    tls_gateway: GatewayProcess, certs: CertSet
) -> None:
    context = ssl.create_default_context(cafile=str(certs.other_ca))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(f"https://localhost:{tls_gateway.port}/v2/health/ready", context)
    with grpcclient.InferenceServerClient(
        f"localhost:{tls_gateway.grpc_port}", ssl=True, root_certificates=str(certs.other_ca)
    ) as client, pytest.raises(InferenceServerException, match=r"UNAVAILABLE|handshake|certificate"):  # fmt: skip
        client.is_server_ready(client_timeout=TIMEOUT_S)


# -- mutual TLS -----------------------------------------------------------------------------------


def test_under_mtls_a_client_with_a_certificate_of_the_ca_is_served(
    mtls_gateway: GatewayProcess, certs: CertSet
) -> None:
    client = _http_client(mtls_gateway, certs.ca, certs.client)
    try:
        assert _http_infer(client).shape == (2, 1)
    finally:
        client.close()
    with _grpc_client(mtls_gateway, certs.ca, certs.client) as grpc_client:
        assert _grpc_infer(grpc_client).shape == (2, 1)


@pytest.mark.parametrize("pair", [None, "untrusted_client"])
def test_under_mtls_a_client_without_a_trusted_certificate_is_refused(
    mtls_gateway: GatewayProcess, certs: CertSet, pair: str | None
) -> None:
    cert = getattr(certs, pair) if pair else None
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        status, _ = _get(f"https://localhost:{mtls_gateway.port}/v2/health/ready", _pinned(certs, cert))
        pytest.fail(f"answered {status} without a trusted client certificate")
    client = _http_client(mtls_gateway, certs.ca, cert)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, HTTPConnectionClosed)):  # TLS 1.3: after the handshake
            client.is_server_ready()
    finally:
        client.close()
    with (
        _grpc_client(mtls_gateway, certs.ca, cert) as grpc_client,
        pytest.raises(InferenceServerException, match="UNAVAILABLE"),
    ):
        grpc_client.is_server_ready(client_timeout=TIMEOUT_S)


# -- the ops listener -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/status", "/dashboard"])
def test_ops_routes_are_served_on_the_ops_port_only(tls_gateway: GatewayProcess, certs: CertSet, path: str) -> None:
    assert tls_gateway.ops_port is not None
    assert _get(f"https://localhost:{tls_gateway.ops_port}{path}", _pinned(certs))[0] == 200
    assert _get(f"https://localhost:{tls_gateway.port}{path}", _pinned(certs))[0] == 404


def test_the_public_port_keeps_health_metadata_and_openapi(tls_gateway: GatewayProcess, certs: CertSet) -> None:
    for path in ("/v2/health/ready", "/v2", "/v2/models/digits", "/openapi.json"):
        assert _get(f"https://localhost:{tls_gateway.port}{path}", _pinned(certs))[0] == 200, path


def test_ops_port_flag_moves_the_ops_routes(repository: Path, tmp_path: Path) -> None:
    config = {"local": {"repository": str(repository), "models": ["digits"]}}
    gateway = GatewayProcess(tmp_path, config)
    gateway.child.args += ["--ops-port", "0"]
    with gateway.start():
        assert gateway.ops_port is not None and gateway.url.startswith("http://")
        assert _get(f"http://127.0.0.1:{gateway.ops_port}/metrics", None)[0] == 200
        assert _get(f"{gateway.url}/metrics", None)[0] == 404
        assert _get(f"{gateway.url}/v2/health/ready", None)[0] == 200


def test_with_workers_each_worker_has_its_own_ops_port(repository: Path, certs: CertSet, tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, _config(repository, certs))
    gateway.child.args += ["--workers", "2"]
    with gateway.start(timeout_s=120):
        line = gateway.child.ready_match.string if gateway.child.ready_match else ""
        ops = line.split(" ops=", 1)[1].split()[0].split(",")
        assert len(ops) == 2 and len(set(ops)) == 2, line
        for address in ops:
            assert _get(f"https://localhost:{address.rsplit(':', 1)[1]}/status", _pinned(certs))[0] == 200
        assert _get(f"{gateway.url.replace('127.0.0.1', 'localhost')}/status", _pinned(certs))[0] == 404


# -- bad files stop start-up with one line naming them -------------------------------------------


def _serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--config", str(config_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["missing_cert", "garbage_key", "wrong_key", "missing_client_ca"])
def test_a_bad_tls_file_stops_serve_with_one_line_naming_it(
    repository: Path, certs: CertSet, tmp_path: Path, fault: str
) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    tls = {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key)}
    bad_key, bad_file = {
        "missing_cert": ("cert_file", str(tmp_path / "nope.crt")),
        "garbage_key": ("key_file", str(garbage)),
        "wrong_key": ("key_file", str(certs.client.key)),
        "missing_client_ca": ("client_ca_file", str(tmp_path / "nope-ca.pem")),
    }[fault]
    tls[bad_key] = bad_file
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({"listen": {"tls": tls}, "local": {"repository": str(repository)}}))
    done = _serve(path)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"railgate serve: listen.tls.{bad_key}: ") and bad_file in lines[0]
    assert "railgate serving" not in done.stdout


# -- the edge runtime to an HTTPS gateway ---------------------------------------------------------


def _edge(repository: Path, gateway: GatewayProcess, ca: Path) -> EdgeRuntime:
    return EdgeRuntime(
        parse_edge_config(
            {
                "repository": str(repository),
                "models": ["digits"],
                "gateway_url": f"https://localhost:{gateway.port}",
                "gateway_tls": {"ca_file": str(ca)},
                "sync": {"enabled": False},
                "probe_interval_s": 0.05,
                "circuit": {"failure_threshold": 1, "backoff_s": 0.1, "max_backoff_s": 0.4},
            }
        )
    )


def test_the_edge_offloads_to_an_https_gateway_it_trusts_by_its_pinned_ca(
    repository: Path, tls_gateway: GatewayProcess, certs: CertSet
) -> None:
    with _edge(repository, tls_gateway, certs.ca) as rt:
        result = rt.infer_sync("digits", sample_inputs("digits", 1), budget_ms=5000, policy="remote")
    assert result.offloaded and result.served_by == "local"  # the gateway's own backend answered


def test_an_edge_pinned_to_another_ca_says_why_and_keeps_answering_locally(
    repository: Path, tls_gateway: GatewayProcess, certs: CertSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="railgate.edge.remote")
    with _edge(repository, tls_gateway, certs.other_ca) as rt:
        results = [rt.infer_sync("digits", sample_inputs("digits", 1), budget_ms=5000) for _ in range(3)]
    assert [r.offloaded for r in results] == [False] * 3
    assert {r.served_by for r in results} == {"local"}
    failures = [r.getMessage() for r in caplog.records if "gateway_tls_failed" in r.getMessage()]
    assert len(failures) == 1, failures  # once, not once per call or per probe
    assert "not trusted" in failures[0] and "unable to get local issuer certificate" in failures[0]
    assert str(certs.other_ca) in failures[0]


# -- an expired gateway certificate, an ops port in use ------------------------------------------


def test_a_gateway_with_an_expired_certificate_is_a_certificate_error_for_clients_in_bounded_time(
    repository: Path, certs: CertSet, tmp_path: Path
) -> None:
    config = _config(repository, certs, ops=False)
    config["listen"]["tls"] = {"cert_file": str(certs.expired.cert), "key_file": str(certs.expired.key)}
    with GatewayProcess(tmp_path, config).start() as gateway:
        with pytest.raises(urllib.error.URLError, match="certificate has expired"):
            _get(f"https://localhost:{gateway.port}/v2/health/ready", _pinned(certs))
        with (
            grpcclient.InferenceServerClient(
                f"localhost:{gateway.grpc_port}", ssl=True, root_certificates=str(certs.ca)
            ) as client,
            pytest.raises(InferenceServerException, match="UNAVAILABLE"),
        ):
            client.is_server_ready(client_timeout=TIMEOUT_S)


def test_an_ops_port_in_use_stops_serve_with_one_line_naming_it(repository: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "gateway.yaml"
        path.write_text(json.dumps({"listen": {"ops": {"port": port}}, "local": {"repository": str(repository)}}))
        done = _serve(path)
    assert done.returncode == 1
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "railgate serve:" in ln]
    assert lines == [f"railgate serve: cannot listen for ops (listen.ops) on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize(("ca", "outcome"), [("ca", "updated"), ("other_ca", "failed")])
def test_edge_sync_pulls_models_over_https_from_the_pinned_ca_only(
    tls_gateway: GatewayProcess, certs: CertSet, tmp_path: Path, ca: str, outcome: str
) -> None:
    url = f"https://localhost:{tls_gateway.port}"
    tls = ClientTLS(ca_file=str(getattr(certs, ca)))
    outcomes = asyncio.run(sync_once(url, tmp_path / "device", ("digits",), TIMEOUT_S, tls=tls))
    assert [o.outcome for o in outcomes] == [outcome]
    if outcome == "failed":
        assert "certificate verify failed" in outcomes[0].detail
    else:
        assert (tmp_path / "device" / "digits" / "1" / "model.onnx").is_file()
