"""Role x RPC: every role against every RPC of every served service, with real tokens.

The expectations below are written from the issue, not read from server/policy.py, so
a wrong line in the policy fails here. Each test gets its own database and server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb

from server.app import SERVICE_NAMES
from tests.auth_helpers import (
    ADMIN,
    CALLERS,
    TENANT_ADMIN_A,
    Caller,
    all_methods,
    as_caller,
    jwt_authorizer,
    running_app,
    table_counts,
)
from tests.helpers import TENANT_A, TENANT_B, expect_error, failure_of

C = "/platform_admin.v1.ConfigService/"
F = "/platform_admin.v1.FlagService/"
H = "/platform_admin.v1.HealthService/"
PWD = "global.password_min_length"

READS = {
    C + "ListConfigKeys",
    C + "GetConfig",
    C + "ListConfigs",
    C + "ListConfigHistory",
    C + "ResolveConfig",
    C + "ResolveConfigs",
    C + "WatchConfigs",
    F + "GetFlag",
    F + "ListFlags",
    F + "EvaluateFlag",
    F + "EvaluateFlags",
    F + "WatchFlags",
    H + "GetHealthSource",
    H + "ListHealthSources",
    H + "ListCheckResults",
    H + "GetPlatformHealth",
}
EXPECTED_ALLOWED: dict[str, set[str] | None] = {
    "platform_admin": None,  # everything
    "platform_reader": READS,
    "service": {
        C + "ResolveConfig",
        C + "ResolveConfigs",
        C + "WatchConfigs",
        F + "EvaluateFlag",
        F + "EvaluateFlags",
        F + "WatchFlags",
        H + "ReportHeartbeat",
        H + "RecordCheckResult",
    },
    "tenant_admin": {
        C + "ListConfigKeys",
        C + "GetConfig",
        C + "ListConfigs",
        C + "SetConfig",
        C + "ArchiveConfig",
        C + "UnarchiveConfig",
        C + "ListConfigHistory",
        C + "ResolveConfig",
        C + "ResolveConfigs",
        C + "WatchConfigs",
        F + "EvaluateFlag",
        F + "EvaluateFlags",
    },
    "no_role": set(),
}

TENANT_ROW = {"key": PWD, "scope": cpb.CONFIG_SCOPE_TENANT, "tenant_id": TENANT_A}

# One request per RPC that every role allowed to call it may make successfully: tenant
# rows are tenant A's (the tenant admin's own), heartbeats are the service's own.
SCENARIOS: dict[str, Callable[[], Message]] = {
    C + "ListConfigKeys": lambda: cpb.ListConfigKeysRequest(),
    C + "GetConfig": lambda: cpb.GetConfigRequest(**TENANT_ROW),
    C + "ListConfigs": lambda: cpb.ListConfigsRequest(tenant_id=TENANT_A),
    C + "SetConfig": lambda: cpb.SetConfigRequest(
        **TENANT_ROW, value=cpb.ConfigValue(int_value=20)
    ),
    C + "ArchiveConfig": lambda: cpb.ArchiveConfigRequest(**TENANT_ROW),
    C + "UnarchiveConfig": lambda: cpb.UnarchiveConfigRequest(**TENANT_ROW),
    C + "ResolveConfig": lambda: cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A),
    C + "ResolveConfigs": lambda: cpb.ResolveConfigsRequest(tenant_id=TENANT_A),
    C + "ListConfigHistory": lambda: cpb.ListConfigHistoryRequest(**TENANT_ROW),
    C + "WatchConfigs": lambda: cpb.WatchConfigsRequest(),
    F + "CreateFlag": lambda: fpb.CreateFlagRequest(key="matrix.created"),
    F + "GetFlag": lambda: fpb.GetFlagRequest(key="matrix.flag"),
    F + "ListFlags": lambda: fpb.ListFlagsRequest(),
    F + "UpdateFlag": lambda: fpb.UpdateFlagRequest(key="matrix.flag", default_enabled=True),
    F + "SetTenantOverride": lambda: fpb.SetTenantOverrideRequest(
        key="matrix.flag", tenant_id=TENANT_A, override=fpb.TENANT_OVERRIDE_DISABLED
    ),
    F + "ArchiveFlag": lambda: fpb.ArchiveFlagRequest(key="matrix.archive"),
    F + "UnarchiveFlag": lambda: fpb.UnarchiveFlagRequest(key="matrix.archive"),
    F + "EvaluateFlag": lambda: fpb.EvaluateFlagRequest(key="matrix.flag", tenant_id=TENANT_A),
    F + "EvaluateFlags": lambda: fpb.EvaluateFlagsRequest(tenant_id=TENANT_A),
    F + "WatchFlags": lambda: fpb.WatchFlagsRequest(),
}


def served(name: str) -> bool:
    return name.split("/")[1] in SERVICE_NAMES


async def call(
    channel: grpc.aio.Channel, name: str, method: Any, request: Message, metadata: Any
) -> tuple[grpc.StatusCode, Any]:
    """Calls any RPC from its descriptor; a stream counts as OK once a first message arrives."""
    response_class = GetMessageClass(method.output_type)
    options = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.server_streaming:
            stream = channel.unary_stream(name, **options)(request, metadata=metadata, timeout=10)
            try:
                first = await asyncio.wait_for(stream.read(), 5)
                if first is grpc.aio.EOF:
                    return await stream.code(), None
                return grpc.StatusCode.OK, first
            finally:
                stream.cancel()
        answer = await channel.unary_unary(name, **options)(request, metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, answer
    except grpc.aio.AioRpcError as error:
        return error.code(), failure_of(error)


async def seed(channel: grpc.aio.Channel, admin: Any) -> None:
    """Rows for both tenants, made through the API as an admin (``admin`` metadata) would."""
    configs = config_pb2_grpc.ConfigServiceStub(channel)
    for tenant, value in ((TENANT_A, 14), (TENANT_B, 15)):
        await configs.SetConfig(
            cpb.SetConfigRequest(
                key=PWD,
                scope=cpb.CONFIG_SCOPE_TENANT,
                tenant_id=tenant,
                value=cpb.ConfigValue(int_value=value),
            ),
            metadata=admin,
        )
    if served(F + "x"):
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        for key in ("matrix.flag", "matrix.archive"):
            await flags.CreateFlag(fpb.CreateFlagRequest(key=key), metadata=admin)
        await flags.SetTenantOverride(
            fpb.SetTenantOverrideRequest(
                key="matrix.flag", tenant_id=TENANT_B, override=fpb.TENANT_OVERRIDE_ENABLED
            ),
            metadata=admin,
        )


KEYS: dict[str, Callable[[], tuple[Any, Any, str]]] = {
    "HS256": lambda: (None, None, "HS256"),
    "ES256": lambda: (*_es256(), "ES256"),
}


def _es256() -> tuple[Any, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, private.public_key()


@pytest.mark.parametrize("caller", CALLERS, ids=[c.name for c in CALLERS])
@pytest.mark.parametrize("key_kind", sorted(KEYS))
async def test_role_matrix(db_url, settings, sql, caller: Caller, key_kind: str):
    signing_key, verify_key, algorithm = KEYS[key_kind]()
    authorizer = (
        jwt_authorizer(verify_key, algorithm) if verify_key is not None else jwt_authorizer()
    )
    expected = EXPECTED_ALLOWED[caller.name]
    sign_kw = {"key": signing_key, "algorithm": algorithm} if signing_key is not None else {}
    async with (
        running_app(db_url, settings, authorizer) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        await seed(channel, as_caller(ADMIN, **sign_kw))
        metadata = as_caller(caller, **sign_kw)
        checked = 0
        for name, method in all_methods():
            if not served(name):
                continue  # a service not registered yet answers UNIMPLEMENTED to everyone
            assert name in SCENARIOS, f"add a request for {name} to SCENARIOS"
            allowed = expected is None or name in expected
            before = table_counts(sql)
            code, answer = await call(channel, name, method, SCENARIOS[name](), metadata)
            checked += 1
            if allowed:
                assert code == grpc.StatusCode.OK, f"{caller.name} {name}: {code} {answer}"
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, f"{caller.name} {name}: {code}"
                assert answer.reason == "ROLE_NOT_ALLOWED"
                assert table_counts(sql) == before, f"{caller.name} {name} wrote rows"
    assert checked >= 20


# --- tenant A against tenant B's rows ---------------------------------------------------------


@pytest.fixture
async def tenant_a(db_url, settings):
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        await seed(channel, as_caller(ADMIN))
        yield channel


async def test_another_tenants_config_rows_are_invisible(tenant_a, sql):
    configs = config_pb2_grpc.ConfigServiceStub(tenant_a)
    md = as_caller(TENANT_ADMIN_A)
    b_row = {"key": PWD, "scope": cpb.CONFIG_SCOPE_TENANT, "tenant_id": TENANT_B}
    unset = {**b_row, "tenant_id": "01JC0000000000000000000CCC"}  # a tenant with no row at all
    before = table_counts(sql)

    seen_b = await expect_error(
        configs.GetConfig(cpb.GetConfigRequest(**b_row), metadata=md), grpc.StatusCode.NOT_FOUND
    )
    seen_unset = await expect_error(
        configs.GetConfig(cpb.GetConfigRequest(**unset), metadata=md), grpc.StatusCode.NOT_FOUND
    )
    # Same answer whether B has a row or not: existence does not leak.
    assert seen_b.message.replace(TENANT_B, "T") == seen_unset.message.replace(
        unset["tenant_id"], "T"
    )
    assert "15" not in seen_b.message
    await expect_error(
        configs.ListConfigHistory(cpb.ListConfigHistoryRequest(**b_row), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    for write in (
        configs.SetConfig(
            cpb.SetConfigRequest(**b_row, value=cpb.ConfigValue(int_value=9)), metadata=md
        ),
        configs.ArchiveConfig(cpb.ArchiveConfigRequest(**b_row), metadata=md),
        configs.UnarchiveConfig(cpb.UnarchiveConfigRequest(**b_row), metadata=md),
    ):
        await expect_error(write, grpc.StatusCode.NOT_FOUND)

    listed = await configs.ListConfigs(cpb.ListConfigsRequest(), metadata=md)
    assert listed.configs and {c.tenant_id for c in listed.configs} == {TENANT_A}
    assert not (
        await configs.ListConfigs(cpb.ListConfigsRequest(tenant_id=TENANT_B), metadata=md)
    ).configs
    platform = await configs.ListConfigs(
        cpb.ListConfigsRequest(scope=cpb.CONFIG_SCOPE_PLATFORM), metadata=md
    )
    assert not platform.configs

    for resolve in (
        configs.ResolveConfig(cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_B), metadata=md),
        configs.ResolveConfigs(cpb.ResolveConfigsRequest(tenant_id=TENANT_B), metadata=md),
        configs.ResolveConfig(cpb.ResolveConfigRequest(key=PWD), metadata=md),
    ):
        await expect_error(resolve, grpc.StatusCode.PERMISSION_DENIED)
    # A tenant admin never writes PLATFORM or NODE rows.
    await expect_error(
        configs.SetConfig(
            cpb.SetConfigRequest(
                key=PWD, scope=cpb.CONFIG_SCOPE_PLATFORM, value=cpb.ConfigValue(int_value=9)
            ),
            metadata=md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert table_counts(sql) == before
    stored = sql.execute(
        "SELECT value FROM platform_configs WHERE tenant_id = %s", (TENANT_B,)
    ).fetchone()
    assert stored == ("15",)


async def test_tenant_admin_evaluates_flags_for_its_own_tenant_only(tenant_a):
    if not served(F + "x"):
        pytest.skip("FlagService is not served yet")
    flags = flag_pb2_grpc.FlagServiceStub(tenant_a)
    md = as_caller(TENANT_ADMIN_A)
    own = await flags.EvaluateFlag(
        fpb.EvaluateFlagRequest(key="matrix.flag", tenant_id=TENANT_A), metadata=md
    )
    assert own.enabled is False  # B is in the enabled list, A is not
    for call_ in (
        flags.EvaluateFlag(
            fpb.EvaluateFlagRequest(key="matrix.flag", tenant_id=TENANT_B), metadata=md
        ),
        flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_B), metadata=md),
    ):
        failure = await expect_error(call_, grpc.StatusCode.PERMISSION_DENIED)
        assert "matrix" not in failure.message
    # Flag definitions list other tenants: never readable by a tenant admin.
    for call_ in (
        flags.GetFlag(fpb.GetFlagRequest(key="matrix.flag"), metadata=md),
        flags.ListFlags(fpb.ListFlagsRequest(), metadata=md),
    ):
        failure = await expect_error(call_, grpc.StatusCode.PERMISSION_DENIED)
        assert TENANT_B not in failure.message
