"""TLS and mTLS with certificates made here: good ones connect, anything else is refused."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

from server.security.tls import server_credentials
from server.settings import Settings, SettingsError
from tests.auth_helpers import READER, as_caller, running_app

REQUEST = pb.GetConfigRequest(key="global.password_min_length", scope=pb.CONFIG_SCOPE_PLATFORM)


@dataclass
class Issued:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A throw-away certificate authority."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@pytest.fixture(scope="module")
def pki():
    ca, other = Authority("platform-admin test CA"), Authority("somebody else's CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("localhost", server=True),
        "client": ca.issue("billing", server=False),
        "rogue_client": other.issue("billing", server=False),
    }


def tls_settings(tmp_path: Path, pki, *, mtls: bool) -> Settings:
    files = {}
    for name, content in (
        ("server.pem", pki["server"].cert),
        ("server.key", pki["server"].key),
        ("ca.pem", pki["ca"].pem),
    ):
        (tmp_path / name).write_bytes(content)
        files[name] = str(tmp_path / name)
    return Settings(
        tls_cert_file=files["server.pem"],
        tls_key_file=files["server.key"],
        tls_client_ca_file=files["ca.pem"] if mtls else None,
    )


async def get(port: int, credentials: grpc.ChannelCredentials | None) -> pb.GetConfigResponse:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        return await stub.GetConfig(REQUEST, metadata=as_caller(READER), timeout=5)


async def refused(port: int, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(port, credentials)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_serves_clients_that_trust_the_ca_only(db_url, settings, tmp_path, pki):
    credentials = server_credentials(tls_settings(tmp_path, pki, mtls=False))
    assert credentials is not None
    async with running_app(db_url, settings, credentials=credentials) as app:
        good = await get(app.port, grpc.ssl_channel_credentials(root_certificates=pki["ca"].pem))
        assert good.config.value.int_value == 12
        await refused(app.port, grpc.ssl_channel_credentials(root_certificates=pki["other"].pem))
        await refused(app.port, None)  # plaintext to a TLS port


async def test_mtls_requires_a_client_certificate_from_the_configured_ca(
    db_url, settings, tmp_path, pki
):
    credentials = server_credentials(tls_settings(tmp_path, pki, mtls=True))
    async with running_app(db_url, settings, credentials=credentials) as app:

        def client(issued: Issued | None) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(
                root_certificates=pki["ca"].pem,
                private_key=issued.key if issued else None,
                certificate_chain=issued.cert if issued else None,
            )

        good = await get(app.port, client(pki["client"]))
        assert good.config.key == REQUEST.key
        await refused(app.port, client(None))
        await refused(app.port, client(pki["rogue_client"]))
        await refused(app.port, None)


def test_no_certificate_means_plaintext():
    assert server_credentials(Settings()) is None


def test_unusable_tls_files_are_named(tmp_path, pki):
    good = tls_settings(tmp_path, pki, mtls=True)
    (tmp_path / "junk.pem").write_bytes(b"not a pem")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(pki["client"].key)
    cases = {
        "PLATFORM_ADMIN_TLS_CERT_FILE.*cannot read": {"tls_cert_file": str(tmp_path / "none.pem")},
        "PLATFORM_ADMIN_TLS_CERT_FILE.*no PEM certificate": {
            "tls_cert_file": str(tmp_path / "junk.pem")
        },
        "PLATFORM_ADMIN_TLS_KEY_FILE.*not an unencrypted PEM": {
            "tls_key_file": str(tmp_path / "junk.pem")
        },
        "does not match the certificate": {"tls_key_file": str(other_key)},
        "PLATFORM_ADMIN_TLS_CLIENT_CA_FILE.*no PEM certificate": {
            "tls_client_ca_file": str(tmp_path / "junk.pem")
        },
    }
    for pattern, change in cases.items():
        with pytest.raises(SettingsError, match=pattern):
            server_credentials(replace(good, **change))


async def test_http_listener_serves_https_with_the_same_certificate(
    db_url, settings, tmp_path, pki
):
    import ssl

    import aiohttp

    from server.app import App
    from server.security.tls import http_ssl_context
    from tests.auth_helpers import jwt_authorizer

    configured = replace(
        tls_settings(tmp_path, pki, mtls=False),
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        probe_enabled=False,
        pool_min=1,
    )
    context = http_ssl_context(configured)
    assert context is not None
    app = App(configured, db_url, authorizer=jwt_authorizer(), http_ssl=context)
    await app.start()
    try:
        trusting = ssl.create_default_context(cadata=pki["ca"].pem.decode())
        headers = {"Authorization": as_caller(READER)[0][1]}
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{app.http_port}/api/v1/session"
            async with http.get(url, ssl=trusting, headers=headers) as response:
                assert response.status == 200
                assert (await response.json())["roles"] == ["platform_reader"]
            # Tokens never cross it in the clear: plaintext HTTP gets no answer.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{app.http_port}/api/v1/session"):
                    pass
    finally:
        await app.stop(grace=0)
