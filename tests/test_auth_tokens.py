"""Authentication through a real server: which tokens are accepted, what a refusal says."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

from server.security import policy
from server.security.auth import LEEWAY_S, load_key
from server.security.principal import ALL_ROLES, PLATFORM_ADMIN
from server.settings import Settings, SettingsError
from tests.auth_helpers import (
    ADMIN,
    AUDIENCE,
    SECRET,
    SERVICE,
    TENANT_ADMIN_A,
    all_methods,
    all_services,
    bearer,
    jwt_authorizer,
    running_app,
    sign,
    table_counts,
)
from tests.helpers import TENANT_A, expect_error

PWD = "global.password_min_length"


def set_request(value: int = 16) -> pb.SetConfigRequest:
    return pb.SetConfigRequest(
        key=PWD,
        scope=pb.CONFIG_SCOPE_TENANT,
        tenant_id=TENANT_A,
        value=pb.ConfigValue(int_value=value),
    )


# --- the policy table ------------------------------------------------------------------


def test_every_rpc_of_every_service_has_a_policy():
    methods = dict(all_methods())
    assert len(methods) >= 20  # ConfigService and FlagService at least: the walk found them
    missing = [name for name in methods if name not in policy.POLICY]
    assert not missing, (
        f"RPCs without a line in server/security/policy.py (denied to all): {missing}"
    )


def test_policy_names_only_real_rpcs_of_the_services_it_knows():
    methods = dict(all_methods())
    known_services = {f"/{s.full_name}/" for s in all_services()}
    for name, roles in policy.POLICY.items():
        assert roles, f"{name} allows nobody"
        assert roles <= ALL_ROLES, f"{name} names an unknown role: {roles - ALL_ROLES}"
        assert PLATFORM_ADMIN in roles, f"platform_admin may call everything, not {name}"
        if any(name.startswith(prefix) for prefix in known_services):
            assert name in methods, f"{name} is in the policy but not in the protos (typo?)"


def test_every_rpc_has_a_shape_the_pipeline_authorizes():
    # The pipeline authorizes unary and server-streaming handlers; a client-streaming RPC
    # would need the pipeline extended first, or it would run without authentication.
    for name, method in all_methods():
        assert not method.client_streaming, f"{name}: client streaming is not authorized"


def test_unknown_methods_are_denied_to_every_role():
    assert not policy.is_allowed("/platform_admin.v1.ConfigService/DropEverything", ALL_ROLES)


# --- refusals on the wire ----------------------------------------------------------------


@pytest.fixture
async def secure(db_url, settings):
    async with (
        running_app(db_url, settings, jwt_authorizer(issuer="https://id.example")) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        yield config_pb2_grpc.ConfigServiceStub(channel)


def good_claims(**extra):
    return ADMIN.claims(**{"iss": "https://id.example", **extra})


BAD_TOKENS = {
    "expired": (lambda: sign(good_claims(exp=int(time.time()) - 120)), "TOKEN_EXPIRED"),
    "not yet valid": (
        lambda: sign(good_claims(nbf=int(time.time()) + 600)),
        "TOKEN_NOT_YET_VALID",
    ),
    "wrong audience": (lambda: sign(good_claims(aud="billing")), "TOKEN_WRONG_AUDIENCE"),
    "wrong issuer": (lambda: sign(good_claims(iss="https://evil.example")), "TOKEN_WRONG_ISSUER"),
    "no issuer": (lambda: sign(ADMIN.claims()), "TOKEN_MISSING_CLAIM"),
    "no exp": (lambda: sign(good_claims(exp=None)), "TOKEN_MISSING_CLAIM"),
    "no roles": (lambda: sign(good_claims(roles=None)), "TOKEN_MISSING_CLAIM"),
    "other secret": (
        lambda: sign(good_claims(), key="another-secret-of-at-least-32-bytes!!"),
        "TOKEN_BAD_SIGNATURE",
    ),
    "HS512 with the right secret": (
        lambda: hmac_token(good_claims(), SECRET.encode(), "HS512"),
        "TOKEN_WRONG_ALGORITHM",
    ),
    "alg none": (
        lambda: jwt.encode(good_claims(), None, algorithm="none"),
        "TOKEN_WRONG_ALGORITHM",
    ),
    "ES256": (
        lambda: sign(good_claims(), key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        "TOKEN_WRONG_ALGORITHM",
    ),
    "garbage": (lambda: "not-a-jwt", "TOKEN_MALFORMED"),
    "garbage segments": (lambda: "e30K.!!.##", "TOKEN_MALFORMED"),
    "sub not a ULID": (lambda: sign(good_claims(sub="alice")), "TOKEN_BAD_CLAIMS"),
    "roles not a list": (lambda: sign(good_claims(roles="platform_admin")), "TOKEN_BAD_CLAIMS"),
    "tenant admin without tenant": (
        lambda: sign(good_claims(roles=["tenant_admin"])),
        "TOKEN_BAD_CLAIMS",
    ),
    "tenant id not a ULID": (
        lambda: sign(good_claims(roles=["tenant_admin"], tenant_id="acme")),
        "TOKEN_BAD_CLAIMS",
    ),
    "service without service id": (
        lambda: sign(good_claims(roles=["service"])),
        "TOKEN_BAD_CLAIMS",
    ),
    "too large": (lambda: sign(good_claims(pad="x" * 5000)), "TOKEN_MALFORMED"),
    # "$" in a pattern matches before a trailing newline: claims are matched in full.
    "sub with a trailing newline": (
        lambda: sign(good_claims(sub=ADMIN.sub + "\n")),
        "TOKEN_BAD_CLAIMS",
    ),
    "tenant id with a trailing newline": (
        lambda: sign(good_claims(roles=["tenant_admin"], tenant_id=TENANT_A + "\n")),
        "TOKEN_BAD_CLAIMS",
    ),
    "service id with a trailing newline": (
        lambda: sign(good_claims(roles=["service"], service_id="billing\n")),
        "TOKEN_BAD_CLAIMS",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_and_write_nothing(secure, sql, case):
    make, reason = BAD_TOKENS[case]
    token = make()
    before = table_counts(sql)
    failure = await expect_error(
        secure.SetConfig(set_request(), metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert failure.reason == reason
    assert token[:40] not in failure.message and SECRET not in failure.message
    assert "id.example" not in failure.message and AUDIENCE not in failure.message
    assert table_counts(sql) == before


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),), (("authorization", "Bearer "),)],
    ids=["missing", "basic", "empty bearer"],
)
async def test_missing_or_malformed_authorization_metadata(secure, metadata):
    failure = await expect_error(
        secure.GetConfig(
            pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM), metadata=metadata
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert "Bearer" in failure.message


async def test_streams_need_a_token_too(secure):
    call = secure.WatchConfigs(pb.WatchConfigsRequest())
    await expect_error(call.read(), grpc.StatusCode.UNAUTHENTICATED)


async def test_expiry_tolerates_small_clock_skew_only(secure):
    request = pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM)
    skewed = sign(good_claims(exp=int(time.time()) - LEEWAY_S // 3))
    got = await secure.GetConfig(request, metadata=bearer(skewed))
    assert got.config.value.int_value == 12
    stale = sign(good_claims(exp=int(time.time()) - LEEWAY_S - 5))
    await expect_error(
        secure.GetConfig(request, metadata=bearer(stale)), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_a_good_token_is_accepted_and_roles_of_other_systems_are_ignored(secure):
    request = pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM)
    token = sign(good_claims(roles=["platform_admin", "billing_admin"], aud=["billing", AUDIENCE]))
    got = await secure.GetConfig(request, metadata=bearer(token))
    assert got.config.key == PWD
    # The "bearer" scheme is case-insensitive (RFC 6750 follows RFC 7235).
    got = await secure.GetConfig(request, metadata=(("authorization", f"bearer {token}"),))
    assert got.config.key == PWD


async def test_health_and_reflection_need_no_token(db_url, settings):
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        names = {s.name for s in response.list_services_response.service}
        assert "platform_admin.v1.ConfigService" in names
        # ... while the API itself does not answer without one.
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        await expect_error(
            configs.ListConfigKeys(pb.ListConfigKeysRequest()), grpc.StatusCode.UNAUTHENTICATED
        )


# --- changed_by is the token's sub ---------------------------------------------------------


async def test_changed_by_is_the_token_sub_in_every_history_entry(db_url, settings, sql):
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        admin = bearer(sign(ADMIN.claims()))
        tenant = bearer(sign(TENANT_ADMIN_A.claims()))
        # A lower-case sub is the same ULID: it is recorded in canonical form.
        lower = bearer(sign(TENANT_ADMIN_A.claims(sub=TENANT_ADMIN_A.sub.lower())))
        await configs.SetConfig(set_request(16), metadata=admin)
        await configs.SetConfig(set_request(17), metadata=tenant)
        target = {"key": PWD, "scope": pb.CONFIG_SCOPE_TENANT, "tenant_id": TENANT_A}
        await configs.ArchiveConfig(pb.ArchiveConfigRequest(**target), metadata=admin)
        await configs.UnarchiveConfig(pb.UnarchiveConfigRequest(**target), metadata=lower)
        history = await configs.ListConfigHistory(
            pb.ListConfigHistoryRequest(**target), metadata=admin
        )
    assert [e.changed_by for e in history.entries] == [
        TENANT_ADMIN_A.sub,
        ADMIN.sub,
        TENANT_ADMIN_A.sub,
        ADMIN.sub,
    ]
    stored = sql.execute(
        "SELECT changed_by FROM config_history WHERE tenant_id = %s ORDER BY changed_at",
        (TENANT_A,),
    ).fetchall()
    assert [r[0] for r in stored] == [ADMIN.sub, TENANT_ADMIN_A.sub, ADMIN.sub, TENANT_ADMIN_A.sub]
    headers = sql.execute(
        "SELECT headers->>'changed_by' FROM outbox WHERE tenant_id = %s ORDER BY created_at",
        (TENANT_A,),
    ).fetchall()
    assert [r[0] for r in headers] == [ADMIN.sub, TENANT_ADMIN_A.sub, ADMIN.sub, TENANT_ADMIN_A.sub]


# --- asymmetric keys -------------------------------------------------------------------------


def hmac_token(claims: dict, key: bytes, alg: str = "HS256") -> str:
    """HMAC-signed JWT by hand: PyJWT refuses a PEM as an HMAC secret, an attacker would not."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = json.dumps({"alg": alg, "typ": "JWT"}).encode()
    signing_input = b64(header) + b"." + b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(key, signing_input, digest).digest()
    return (signing_input + b"." + b64(signature)).decode()


def pem_public(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_tokens_signed_with_the_private_half_of_the_configured_public_key(
    db_url, settings, tmp_path, algorithm
):
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    key_file = tmp_path / "jwt.pub.pem"
    key_file.write_bytes(pem_public(private))
    key = load_key(Settings(auth="jwt", jwt_public_key_file=str(key_file)))
    assert key.algorithm == algorithm
    authorizer = jwt_authorizer(key.key, algorithm)
    async with (
        running_app(db_url, settings, authorizer) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        good = bearer(sign(SERVICE.claims(), private, algorithm))
        resolved = await configs.ResolveConfig(
            pb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A), metadata=good
        )
        assert resolved.value.int_value == 12
        # Algorithm confusion: an HS256 token whose "secret" is the public key itself.
        confused = bearer(hmac_token(SERVICE.claims(), key_file.read_bytes()))
        failure = await expect_error(
            configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD), metadata=confused),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert failure.reason == "TOKEN_WRONG_ALGORITHM"
        other = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if algorithm == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        forged = bearer(sign(SERVICE.claims(), other, algorithm))
        await expect_error(
            configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD), metadata=forged),
            grpc.StatusCode.UNAUTHENTICATED,
        )


# --- settings --------------------------------------------------------------------------------


def env(**values: str) -> dict[str, str]:
    return {f"PLATFORM_ADMIN_{k}": v for k, v in values.items()}


def test_auth_defaults_follow_the_configured_key():
    assert Settings.from_env({}).auth == "off"
    configured = Settings.from_env(env(JWT_SECRET=SECRET))
    assert (configured.auth, configured.jwt_audience, configured.jwt_issuer) == (
        "jwt",
        "platform-admin",
        None,
    )
    assert Settings.from_env(env(JWT_SECRET=SECRET, AUTH="off")).auth == "off"
    custom = Settings.from_env(env(JWT_SECRET=SECRET, JWT_AUDIENCE="pa", JWT_ISSUER="https://i"))
    assert (custom.jwt_audience, custom.jwt_issuer) == ("pa", "https://i")


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"AUTH": "jwt"}, "PLATFORM_ADMIN_JWT_SECRET"),
        ({"AUTH": "maybe"}, "PLATFORM_ADMIN_AUTH"),
        ({"JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"JWT_SECRET": SECRET, "JWT_PUBLIC_KEY_FILE": "/k.pem"}, "both set"),
        ({"TLS_CERT_FILE": "/c.pem"}, "PLATFORM_ADMIN_TLS_KEY_FILE"),
        ({"TLS_CLIENT_CA_FILE": "/ca.pem"}, "PLATFORM_ADMIN_TLS_CERT_FILE"),
    ],
)
def test_inconsistent_security_settings_stop_the_server_with_a_named_reason(values, names):
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env(**values))


def test_unusable_public_key_files_are_named(tmp_path: Path):
    def load(content: bytes | None) -> None:
        path = tmp_path / "key.pem"
        if content is not None:
            path.write_bytes(content)
        load_key(Settings(auth="jwt", jwt_public_key_file=str(path)))

    with pytest.raises(SettingsError, match="cannot read"):
        load(None)
    with pytest.raises(SettingsError, match="not a PEM public key"):
        load(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SettingsError, match="2048"):
        load(pem_public(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(SettingsError, match="P-256"):
        load(pem_public(ec.generate_private_key(ec.SECP384R1())))
