"""The TLS and ops-listener keys of the gateway and edge configs: parsed, and checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.certs import CertSet, issue_certs
from edge.config import parse_edge_config
from gateway.config import ConfigError, parse_config
from railcore.tls import ClientTLS, ServerTLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return issue_certs(tmp_path_factory.mktemp("certs"))


def test_listen_tls_and_ops_parse(certs: CertSet) -> None:
    config = parse_config(
        {
            "listen": {
                "port": 8443,
                "grpc_port": 8444,
                "tls": {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key),
                        "client_ca_file": str(certs.ca)},
                "ops": {"host": "127.0.0.1", "port": 9100},
            }
        }
    )  # fmt: skip
    assert config.listen.tls == ServerTLS(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    assert config.listen.ops is not None and (config.listen.ops.host, config.listen.ops.port) == ("127.0.0.1", 9100)


def test_without_tls_or_ops_the_listener_is_plain_and_alone() -> None:
    config = parse_config({})
    assert config.listen.tls is None and config.listen.ops is None


def test_hub_tls_parses(certs: CertSet) -> None:
    tls = {"ca_file": str(certs.ca), "cert_file": str(certs.client.cert), "key_file": str(certs.client.key),
           "server_name": "localhost"}  # fmt: skip
    config = parse_config({"hubs": [{"name": "h", "url": "https://127.0.0.1:8443", "tls": tls}]})
    assert config.hubs[0].tls == ClientTLS(**tls)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"listen": {"tls": {"cert_file": "MISSING", "key_file": "K"}}}, "listen.tls.cert_file: cannot read MISSING"),
        ({"listen": {"tls": {"cert_file": "C"}}}, "listen.tls.key_file: required"),
        ({"hubs": [{"name": "h", "url": "https://127.0.0.1:1", "tls": {"ca_file": "MISSING"}}]},
         "hubs[0].tls.ca_file: cannot read MISSING"),
        ({"hubs": [{"name": "h", "url": "127.0.0.1:1", "protocol": "grpc", "tls": {"ca_file": "MISSING"}}]},
         "hubs[0].tls.ca_file: cannot read MISSING"),
        ({"hubs": [{"name": "h", "url": "http://127.0.0.1:1", "tls": {}}]},
         "hubs[0].url (hub h): tls is set, so the url must be https://"),
        ({"listen": {"ops": {"port": 70000}}}, "listen.ops.port: expected 0..65535"),
        ({"listen": {"port": 8000, "ops": {"port": 8000}}}, "listen.ops.port: 8000 is listen.port"),
    ],
)  # fmt: skip
def test_bad_tls_and_ops_settings_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert str(caught.value).startswith(key), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_wrong_key_file_stops_the_load_naming_it(certs: CertSet) -> None:
    raw = {"listen": {"tls": {"cert_file": str(certs.server.cert), "key_file": str(certs.client.key)}}}
    with pytest.raises(ConfigError, match=rf"^listen\.tls\.key_file: {certs.client.key} is not the key of"):
        parse_config(raw)


def test_edge_gateway_tls_parses_and_checks_its_files(certs: CertSet, tmp_path: Path) -> None:
    config = parse_edge_config({"gateway_url": "https://127.0.0.1:8443", "gateway_tls": {"ca_file": str(certs.ca)}})
    assert config.gateway_tls == ClientTLS(ca_file=str(certs.ca))
    with pytest.raises(ConfigError, match=r"^gateway_tls\.ca_file: cannot read "):
        parse_edge_config({"gateway_url": "https://127.0.0.1:8443", "gateway_tls": {"ca_file": str(tmp_path / "x")}})
    with pytest.raises(ConfigError, match=r"^gateway_tls: set, so gateway_url must be https://"):
        parse_edge_config({"gateway_url": "http://127.0.0.1:8000", "gateway_tls": {"ca_file": str(certs.ca)}})
