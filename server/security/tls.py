"""Transport security: server TLS credentials from PEM files, mTLS when a client CA is set.

The files are read and checked at start (certificate parses, key matches it, CA parses),
so a wrong path or a mismatched pair stops the server with a message naming the setting
rather than failing inside the TLS handshake of the first caller.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from server.settings import Settings, SettingsError


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name}={path!r}: cannot read the file ({exc.strerror})") from None


def _certificates(name: str, path: str, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise SettingsError(f"{name}={path!r}: no PEM certificate in the file")
    return certs


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port, or None when no certificate is configured."""
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    cert_name, key_name = "PLATFORM_ADMIN_TLS_CERT_FILE", "PLATFORM_ADMIN_TLS_KEY_FILE"
    chain = _read(cert_name, settings.tls_cert_file)
    leaf = _certificates(cert_name, settings.tls_cert_file, chain)[0]
    key_pem = _read(key_name, settings.tls_key_file)
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SettingsError(
            f"{key_name}={settings.tls_key_file!r}: not an unencrypted PEM private key"
        ) from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise SettingsError(
            f"{key_name}={settings.tls_key_file!r} does not match the certificate in {cert_name}"
        )
    client_ca: bytes | None = None
    if settings.tls_client_ca_file:
        ca_name = "PLATFORM_ADMIN_TLS_CLIENT_CA_FILE"
        client_ca = _read(ca_name, settings.tls_client_ca_file)
        _certificates(ca_name, settings.tls_client_ca_file, client_ca)
    return grpc.ssl_server_credentials(
        [(key_pem, chain)],
        root_certificates=client_ca,
        # With a client CA, a caller without a certificate it signed cannot even connect.
        require_client_auth=client_ca is not None,
    )


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same certificate (and client CA) for the HTTP listener, so tokens never cross it
    in the clear where the gRPC port is encrypted; None when no certificate is configured.

    Call after :func:`server_credentials`, which checks the files and names a bad one.
    """
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"TLS files unusable for the HTTP listener: {exc}") from None
    return context
