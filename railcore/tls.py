"""TLS from PEM files: the one place the gateway and the edge build their contexts and credentials.

Two shapes of settings, both plain dataclasses the config loaders embed:

- ``ServerTLS`` (a listener): ``cert_file``, ``key_file`` and, for mutual TLS, ``client_ca_file``
  (clients must then present a certificate that CA signed, or the handshake is refused);
- ``ClientTLS`` (a connection out: to a hub, or from a device to the gateway): ``ca_file`` (the CA
  pinned for the peer; none: the system's store), ``cert_file`` + ``key_file`` (a client certificate,
  for a peer that asks for one) and ``server_name`` (the name checked against the peer's certificate
  and sent as SNI, when the address dialled is not the name the certificate carries).

Every file is read and parsed here, at config load, before anything listens or dials: a file that is
missing, unreadable, holds no PEM of the expected kind, or a key that is not its certificate's is a
``ConfigError`` of one line naming the key and the file (``listen.tls.key_file: /x.key is not the key
of /x.crt``). ``server_pem``/``client_pem`` give grpc the same checked bytes that ``server_context``/
``client_context`` give asyncio's ssl; ``https_connector`` is the aiohttp side of a ``ClientTLS``.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from railcore.settings import ConfigError


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A TLS listener: its certificate chain and key; with ``client_ca_file``, mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """A TLS connection out: the pinned CA, an optional client certificate, the name to check."""

    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # checked against the peer's certificate; None: the host dialled


@dataclass(frozen=True, slots=True)
class ServerPem:
    cert: bytes
    key: bytes
    client_ca: bytes | None


@dataclass(frozen=True, slots=True)
class ClientPem:
    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _certificates(path: str, key: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{key}: {path} holds no PEM certificate")
    return data, certs


def _private_key(path: str, key: str) -> tuple[bytes, object]:
    data = _read(path, key)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{key}: {path} is an encrypted key; give an unencrypted PEM key") from None
    except ValueError:
        raise ConfigError(f"{key}: {path} holds no PEM private key") from None
    return data, private


def _public_bytes(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _chain(cert_file: str, key_file: str, where: str) -> tuple[bytes, bytes]:
    """The certificate chain and its key, each parsed, and the key checked to be the first certificate's."""
    cert_data, certs = _certificates(cert_file, f"{where}.cert_file")
    key_data, private = _private_key(key_file, f"{where}.key_file")
    if _public_bytes(certs[0].public_key()) != _public_bytes(private.public_key()):  # type: ignore[attr-defined]
        raise ConfigError(f"{where}.key_file: {key_file} is not the key of {cert_file}")
    return cert_data, key_data


def server_pem(tls: ServerTLS, where: str) -> ServerPem:
    """The listener's checked PEM bytes (for grpc's ``ssl_server_credentials``)."""
    cert, key = _chain(tls.cert_file, tls.key_file, where)
    ca = _certificates(tls.client_ca_file, f"{where}.client_ca_file")[0] if tls.client_ca_file else None
    return ServerPem(cert, key, ca)


def client_pem(tls: ClientTLS, where: str) -> ClientPem:
    """The connection's checked PEM bytes (for grpc's ``ssl_channel_credentials``)."""
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "key_file" if tls.key_file is None else "cert_file"
        other = "cert_file" if missing == "key_file" else "key_file"
        raise ConfigError(f"{where}.{missing}: required with {other} (a client certificate needs its key)")
    ca = _certificates(tls.ca_file, f"{where}.ca_file")[0] if tls.ca_file else None
    cert = key = None
    if tls.cert_file is not None and tls.key_file is not None:
        cert, key = _chain(tls.cert_file, tls.key_file, where)
    return ClientPem(ca, cert, key)


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str, where: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:  # parsed fine above: what is left is OpenSSL's own refusal
        raise ConfigError(f"{where}.cert_file: OpenSSL refused {cert_file} with {key_file}: {exc}") from None


def server_context(tls: ServerTLS, where: str) -> ssl.SSLContext:
    """An ``SSLContext`` for a listener (TLS 1.2+); with ``client_ca_file`` a client certificate is required."""
    pem = server_pem(tls, where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls.cert_file, tls.key_file, where)
    if pem.client_ca is not None:
        context.load_verify_locations(cadata=pem.client_ca.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: ClientTLS, where: str) -> ssl.SSLContext:
    """An ``SSLContext`` that verifies the peer against ``ca_file`` (or the system store) and its name."""
    pem = client_pem(tls, where)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pem.ca is not None:
        # Pinned: only this CA, not the system's store beside it.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cadata=pem.ca.decode("ascii", errors="replace"))
    if tls.cert_file is not None and tls.key_file is not None:
        _load_chain(context, tls.cert_file, tls.key_file, where)
    return context


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (plain text to it never leaves the host)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _NameResolver(AbstractResolver):
    """Resolves ``name`` (the peer's certificate name) to ``address`` (where it is dialled), keeping the
    name as the hostname aiohttp sends as SNI and checks the certificate against."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        if host != self.name:
            return await self._resolver.resolve(host, port, family)
        found = await self._resolver.resolve(self.address, port, family)
        return [{**entry, "hostname": self.name} for entry in found]

    async def close(self) -> None:
        await self._resolver.close()


def https_connector(
    url: str, tls: ClientTLS | None, where: str, *, limit: int, keepalive_timeout: float
) -> tuple[str, aiohttp.TCPConnector]:
    """An aiohttp connector for ``url`` with ``tls`` (None: aiohttp's defaults, the system's store for
    https), and the URL to request: with ``server_name`` the URL names it and a resolver dials the
    configured address, so the name is what SNI sends and the certificate is checked against."""
    context: ssl.SSLContext | bool = client_context(tls, where) if tls is not None else True
    resolver = None
    parts = urlsplit(url)
    if tls is not None and tls.server_name and parts.hostname and tls.server_name != parts.hostname:
        resolver = _NameResolver(tls.server_name, parts.hostname)
        netloc = f"{tls.server_name}:{parts.port}" if parts.port else tls.server_name
        url = urlunsplit(parts._replace(netloc=netloc))
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=keepalive_timeout, ssl=context, resolver=resolver)
    return url, connector


def describe_tls_failure(exc: BaseException) -> str | None:
    """What a failed handshake says, in a line (None: the failure was not TLS's)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        return f"certificate of {exc.host}:{exc.port} not trusted: {reason}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return f"TLS handshake failed: {exc}"
    return None
