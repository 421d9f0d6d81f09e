"""railcore.tls: contexts from PEM files, and one-line errors naming the bad file.

Handshakes run in memory (``ssl.MemoryBIO``): real OpenSSL, no socket.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from devtools.certs import CertSet, issue_certs
from railcore.settings import ConfigError
from railcore.tls import ClientTLS, ServerTLS, client_context, client_pem, is_loopback, server_context, server_pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return issue_certs(tmp_path_factory.mktemp("certs"))


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_name: str = "localhost") -> None:
    """A full TLS handshake between the two contexts over memory buffers; raises the first side's error."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):  # a TLS 1.3 handshake takes a few flights
        for name, side, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after the client thinks it is done
            c.write(b"x")
            s_in.write(c_out.read())
            assert s.read(1) == b"x"
            return
    raise AssertionError("handshake did not finish")


def test_a_client_pinned_to_the_ca_completes_a_handshake(certs: CertSet) -> None:
    server = server_context(ServerTLS(str(certs.server.cert), str(certs.server.key)), "listen.tls")
    _handshake(server, client_context(ClientTLS(ca_file=str(certs.ca)), "hubs[0].tls"))


def test_a_server_of_another_ca_is_refused(certs: CertSet) -> None:
    server = server_context(ServerTLS(str(certs.untrusted.cert), str(certs.untrusted.key)), "listen.tls")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        _handshake(server, client_context(ClientTLS(ca_file=str(certs.ca)), "t"))


def test_an_expired_server_certificate_is_refused(certs: CertSet) -> None:
    server = server_context(ServerTLS(str(certs.expired.cert), str(certs.expired.key)), "listen.tls")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        _handshake(server, client_context(ClientTLS(ca_file=str(certs.ca)), "t"))


def test_server_name_is_checked_against_the_certificate(certs: CertSet) -> None:
    server = server_context(ServerTLS(str(certs.server.cert), str(certs.server.key)), "listen.tls")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(server, client_context(ClientTLS(ca_file=str(certs.ca)), "t"), server_name="hub.example")


@pytest.mark.parametrize(("client_pair", "accepted"), [("client", True), (None, False), ("untrusted_client", False)])
def test_with_a_client_ca_only_clients_with_its_certificates_get_in(
    certs: CertSet, client_pair: str | None, accepted: bool
) -> None:
    tls = ServerTLS(str(certs.server.cert), str(certs.server.key), client_ca_file=str(certs.ca))
    pair = getattr(certs, client_pair) if client_pair else None
    client = client_context(
        ClientTLS(
            ca_file=str(certs.ca),
            cert_file=str(pair.cert) if pair else None,
            key_file=str(pair.key) if pair else None,
        ),
        "t",
    )
    if accepted:
        _handshake(server_context(tls, "listen.tls"), client)
    else:
        with pytest.raises(ssl.SSLError):
            _handshake(server_context(tls, "listen.tls"), client)


def test_server_pem_hands_grpc_the_validated_bytes(certs: CertSet) -> None:
    pem = server_pem(ServerTLS(str(certs.server.cert), str(certs.server.key), str(certs.ca)), "listen.tls")
    assert pem.cert == certs.server.cert.read_bytes()
    assert pem.key == certs.server.key.read_bytes()
    assert pem.client_ca == certs.ca.read_bytes()
    client = client_pem(ClientTLS(ca_file=str(certs.ca)), "t")
    assert (client.ca, client.cert, client.key) == (certs.ca.read_bytes(), None, None)


def _bad_files(certs: CertSet, tmp: Path) -> dict[str, Path]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    unreadable = tmp / "unreadable.pem"
    unreadable.write_bytes(certs.server.cert.read_bytes())
    unreadable.chmod(0)
    return {"missing": tmp / "missing.pem", "garbage": garbage, "unreadable": unreadable}


@pytest.mark.parametrize("field", ["cert_file", "key_file", "client_ca_file"])
@pytest.mark.parametrize("fault", ["missing", "garbage"])
def test_a_bad_server_file_is_one_line_naming_the_key_and_the_file(
    certs: CertSet, tmp_path: Path, field: str, fault: str
) -> None:
    bad = _bad_files(certs, tmp_path)[fault]
    files = {"cert_file": str(certs.server.cert), "key_file": str(certs.server.key), "client_ca_file": str(certs.ca)}
    files[field] = str(bad)
    with pytest.raises(ConfigError) as caught:
        server_context(ServerTLS(**files), "listen.tls")
    message = str(caught.value)
    assert message.startswith(f"listen.tls.{field}: ")
    assert str(bad) in message
    assert "\n" not in message


def test_an_unreadable_file_says_it_cannot_be_read(certs: CertSet, tmp_path: Path) -> None:
    bad = _bad_files(certs, tmp_path)["unreadable"]
    try:
        bad.read_bytes()
    except PermissionError:
        pass
    else:
        pytest.skip("running as root: a mode-0 file is still readable")
    with pytest.raises(ConfigError, match=rf"^hubs\[0\]\.tls\.ca_file: cannot read {bad}: Permission denied$"):
        client_context(ClientTLS(ca_file=str(bad)), "hubs[0].tls")


def test_a_key_that_is_not_the_certificates_is_named(certs: CertSet) -> None:
    with pytest.raises(ConfigError, match=rf"^listen\.tls\.key_file: {certs.client.key} is not the key of "):
        server_context(ServerTLS(str(certs.server.cert), str(certs.client.key)), "listen.tls")


def test_a_client_certificate_needs_its_key(certs: CertSet) -> None:
    with pytest.raises(ConfigError, match=r"^gateway_tls\.key_file: required with cert_file"):
        client_context(ClientTLS(ca_file=str(certs.ca), cert_file=str(certs.client.cert)), "gateway_tls")


def test_a_certificate_file_is_not_a_ca_file_for_a_key(certs: CertSet) -> None:
    with pytest.raises(ConfigError, match=r"^listen\.tls\.cert_file: .* holds no PEM certificate"):
        server_context(ServerTLS(str(certs.server.key), str(certs.server.key)), "listen.tls")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True), ("10.0.0.7", False),
     ("hub.example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
