"""Role x RPC: every role against every RPC of every served service, with real tokens.

The expectations below are written from the issue, not read from server/security/policy.py, so
a wrong line in the policy fails here. Each test gets its own database and server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flagd.evaluation.v1 import evaluation_pb2 as e1pb
from flagd.evaluation.v2 import evaluation_pb2 as e2pb
from flagd.sync.v1 import sync_pb2 as spb
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc, health_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import health_pb2 as hpb

from server.app import SERVICE_NAMES
from tests.auth_helpers import (
    ADMIN,
    CALLERS,
    OTHER_SERVICE_ID,
    SERVICE,
    SERVICE_ID,
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
E1 = "/flagd.evaluation.v1.Service/"
E2 = "/flagd.evaluation.v2.Service/"
SYNC = "/flagd.sync.v1.FlagSyncService/"
_RESOLVES = ("ResolveBoolean", "ResolveString", "ResolveFloat", "ResolveInt", "ResolveObject")
# flagd evaluations: like EvaluateFlag / ResolveConfig (tenant admins for their own tenant).
FLAGD_EVALUATIONS = {
    *(prefix + rpc for prefix in (E1, E2) for rpc in (*_RESOLVES, "EventStream")),
    E1 + "ResolveAll",
}
# The flag set names every tenant of every list: like WatchFlags, not for tenant admins.
FLAGD_SYNC = {SYNC + "SyncFlags", SYNC + "FetchAllFlags", SYNC + "GetMetadata"}
# RPCs whose every allowed call ends with this code (never OK by design).
EXPECTED_CODE = {
    E1 + "ResolveObject": grpc.StatusCode.INVALID_ARGUMENT,  # no object flags: TYPE_MISMATCH
    E2 + "ResolveObject": grpc.StatusCode.INVALID_ARGUMENT,
    SYNC + "GetMetadata": grpc.StatusCode.UNIMPLEMENTED,
}

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
    *FLAGD_EVALUATIONS,
    *FLAGD_SYNC,
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
        *FLAGD_EVALUATIONS,
        *FLAGD_SYNC,
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
        *FLAGD_EVALUATIONS,
    },
    "no_role": set(),
}

TENANT_ROW = {"key": PWD, "scope": cpb.CONFIG_SCOPE_TENANT, "tenant_id": TENANT_A}


def _tenant_a_context() -> struct_pb2.Struct:
    context = struct_pb2.Struct()
    context.update({"targetingKey": TENANT_A})
    return context


def _flagd_request(prefix: str, rpc: str, key: str) -> Callable[[dict[str, str]], Message]:
    module = e1pb if prefix == E1 else e2pb
    request_type = getattr(module, f"{rpc}Request")
    return lambda ids: request_type(flag_key=key, context=_tenant_a_context())


# One request per RPC that every role allowed to call it may make successfully: tenant
# rows are tenant A's (the tenant admin's own), heartbeats are the service's own.
SCENARIOS: dict[str, Callable[[dict[str, str]], Message]] = {
    C + "ListConfigKeys": lambda ids: cpb.ListConfigKeysRequest(),
    C + "GetConfig": lambda ids: cpb.GetConfigRequest(**TENANT_ROW),
    C + "ListConfigs": lambda ids: cpb.ListConfigsRequest(tenant_id=TENANT_A),
    C + "SetConfig": lambda ids: cpb.SetConfigRequest(
        **TENANT_ROW, value=cpb.ConfigValue(int_value=20)
    ),
    C + "ArchiveConfig": lambda ids: cpb.ArchiveConfigRequest(**TENANT_ROW),
    C + "UnarchiveConfig": lambda ids: cpb.UnarchiveConfigRequest(**TENANT_ROW),
    C + "ResolveConfig": lambda ids: cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A),
    C + "ResolveConfigs": lambda ids: cpb.ResolveConfigsRequest(tenant_id=TENANT_A),
    C + "ListConfigHistory": lambda ids: cpb.ListConfigHistoryRequest(**TENANT_ROW),
    C + "WatchConfigs": lambda ids: cpb.WatchConfigsRequest(),
    F + "CreateFlag": lambda ids: fpb.CreateFlagRequest(key="matrix.created"),
    F + "GetFlag": lambda ids: fpb.GetFlagRequest(key="matrix.flag"),
    F + "ListFlags": lambda ids: fpb.ListFlagsRequest(),
    F + "UpdateFlag": lambda ids: fpb.UpdateFlagRequest(key="matrix.flag", default_enabled=True),
    F + "SetTenantOverride": lambda ids: fpb.SetTenantOverrideRequest(
        key="matrix.flag", tenant_id=TENANT_A, override=fpb.TENANT_OVERRIDE_DISABLED
    ),
    F + "ArchiveFlag": lambda ids: fpb.ArchiveFlagRequest(key="matrix.archive"),
    F + "UnarchiveFlag": lambda ids: fpb.UnarchiveFlagRequest(key="matrix.archive"),
    F + "EvaluateFlag": lambda ids: fpb.EvaluateFlagRequest(key="matrix.flag", tenant_id=TENANT_A),
    F + "EvaluateFlags": lambda ids: fpb.EvaluateFlagsRequest(tenant_id=TENANT_A),
    F + "WatchFlags": lambda ids: fpb.WatchFlagsRequest(),
    H + "CreateHealthSource": lambda ids: hpb.CreateHealthSourceRequest(
        service_id="matrix-new", health_url="http://127.0.0.1:9/health", check_interval_s=3600
    ),
    H + "GetHealthSource": lambda ids: hpb.GetHealthSourceRequest(id=ids[SERVICE_ID]),
    H + "ListHealthSources": lambda ids: hpb.ListHealthSourcesRequest(),
    H + "UpdateHealthSource": lambda ids: hpb.UpdateHealthSourceRequest(
        id=ids[SERVICE_ID],
        staleness_threshold_s=120,
        update_mask=field_mask_pb2.FieldMask(paths=["staleness_threshold_s"]),
    ),
    H + "DeleteHealthSource": lambda ids: hpb.DeleteHealthSourceRequest(id=ids["matrix-delete"]),
    H + "ReportHeartbeat": lambda ids: hpb.ReportHeartbeatRequest(service_id=SERVICE_ID),
    H + "RecordCheckResult": lambda ids: hpb.RecordCheckResultRequest(
        source_id=ids[SERVICE_ID], status=hpb.HEALTH_STATUS_HEALTHY
    ),
    H + "ListCheckResults": lambda ids: hpb.ListCheckResultsRequest(source_id=ids[SERVICE_ID]),
    H + "GetPlatformHealth": lambda ids: hpb.GetPlatformHealthRequest(),
    **{
        prefix + rpc: _flagd_request(prefix, rpc, key)
        for prefix in (E1, E2)
        for rpc, key in (
            ("ResolveBoolean", "matrix.flag"),
            ("ResolveString", "config:email.smtp_host"),
            ("ResolveFloat", "config:" + PWD),
            ("ResolveInt", "config:" + PWD),
            ("ResolveObject", "matrix.flag"),
        )
    },
    E1 + "ResolveAll": lambda ids: e1pb.ResolveAllRequest(context=_tenant_a_context()),
    E1 + "EventStream": lambda ids: e1pb.EventStreamRequest(),
    E2 + "EventStream": lambda ids: e2pb.EventStreamRequest(),
    SYNC + "SyncFlags": lambda ids: spb.SyncFlagsRequest(),
    SYNC + "FetchAllFlags": lambda ids: spb.FetchAllFlagsRequest(),
    SYNC + "GetMetadata": lambda ids: spb.GetMetadataRequest(),
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


async def seed(channel: grpc.aio.Channel, admin: Any) -> dict[str, str]:
    """Rows for both tenants, flags, health sources, made through the API as an admin
    (``admin`` metadata) would. Returns the health source ids by service id."""
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
    ids: dict[str, str] = {}
    if served(H + "x"):
        health = health_pb2_grpc.HealthServiceStub(channel)
        for service_id in (SERVICE_ID, OTHER_SERVICE_ID, "matrix-delete"):
            created = await health.CreateHealthSource(
                hpb.CreateHealthSourceRequest(
                    service_id=service_id,
                    health_url="http://127.0.0.1:9/health",
                    check_interval_s=3600,
                ),
                metadata=admin,
            )
            ids[service_id] = created.source.id
    return ids


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
        ids = await seed(channel, as_caller(ADMIN, **sign_kw))
        metadata = as_caller(caller, **sign_kw)
        checked = 0
        for name, method in all_methods():
            assert served(name), f"{name} is in the descriptors but not served"
            assert name in SCENARIOS, f"add a request for {name} to SCENARIOS"
            allowed = expected is None or name in expected
            before = table_counts(sql)
            code, answer = await call(channel, name, method, SCENARIOS[name](ids), metadata)
            checked += 1
            if allowed:
                wanted = EXPECTED_CODE.get(name, grpc.StatusCode.OK)
                assert code == wanted, f"{caller.name} {name}: {code} {answer}"
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, f"{caller.name} {name}: {code}"
                assert answer.reason == "ROLE_NOT_ALLOWED"
                assert table_counts(sql) == before, f"{caller.name} {name} wrote rows"
    assert checked >= 20


# --- tenant A against tenant B's rows ---------------------------------------------------------


@pytest.fixture
async def seeded(db_url, settings):
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        ids = await seed(channel, as_caller(ADMIN))
        yield channel, ids


async def test_another_tenants_config_rows_are_invisible(seeded, sql):
    configs = config_pb2_grpc.ConfigServiceStub(seeded[0])
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


async def test_tenant_admin_evaluates_flags_for_its_own_tenant_only(seeded):
    assert served(F + "x"), "FlagService must be served"
    flags = flag_pb2_grpc.FlagServiceStub(seeded[0])
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


# --- a service against another service's heartbeat --------------------------------------------


def heartbeat_of(sql, service_id: str) -> Any:
    row = sql.execute(
        "SELECT last_heartbeat_at FROM health_sources WHERE service_id = %s", (service_id,)
    ).fetchone()
    return row[0]


def pushed_results(sql, source_id: str) -> int:
    # Results a caller pushed as healthy; the prober's checks of 127.0.0.1:9 are unhealthy.
    row = sql.execute(
        "SELECT count(*) FROM health_check_results WHERE source_id = %s AND status = 'healthy'",
        (source_id.removeprefix("hsr_"),),
    ).fetchone()
    return row[0]


async def test_a_service_reports_for_its_own_service_id_only(seeded, sql):
    assert served(H + "x"), "HealthService must be served"
    channel, ids = seeded
    health = health_pb2_grpc.HealthServiceStub(channel)
    md = as_caller(SERVICE)
    own_before = heartbeat_of(sql, SERVICE_ID)
    own = await health.ReportHeartbeat(
        hpb.ReportHeartbeatRequest(service_id=SERVICE_ID), metadata=md
    )
    assert own.source.service_id == SERVICE_ID
    assert heartbeat_of(sql, SERVICE_ID) > own_before
    recorded = await health.RecordCheckResult(
        hpb.RecordCheckResultRequest(source_id=ids[SERVICE_ID], status=hpb.HEALTH_STATUS_HEALTHY),
        metadata=md,
    )
    assert recorded.result.source_id == ids[SERVICE_ID]

    other_heartbeat = heartbeat_of(sql, OTHER_SERVICE_ID)
    other_results = pushed_results(sql, ids[OTHER_SERVICE_ID])
    await expect_error(
        health.ReportHeartbeat(
            hpb.ReportHeartbeatRequest(service_id=OTHER_SERVICE_ID), metadata=md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        health.RecordCheckResult(
            hpb.RecordCheckResultRequest(
                source_id=ids[OTHER_SERVICE_ID], status=hpb.HEALTH_STATUS_HEALTHY
            ),
            metadata=md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert heartbeat_of(sql, OTHER_SERVICE_ID) == other_heartbeat
    assert pushed_results(sql, ids[OTHER_SERVICE_ID]) == other_results
    # Nor may a service manage the registry.
    for denied in (
        health.DeleteHealthSource(
            hpb.DeleteHealthSourceRequest(id=ids[OTHER_SERVICE_ID]), metadata=md
        ),
        health.GetHealthSource(hpb.GetHealthSourceRequest(id=ids[SERVICE_ID]), metadata=md),
    ):
        failure = await expect_error(denied, grpc.StatusCode.PERMISSION_DENIED)
        assert failure.reason == "ROLE_NOT_ALLOWED"


async def test_tenant_admin_never_resolves_node_scope_values(seeded, sql):
    """Resolve would show NODE rows (source_scope NODE) that Get/List/Watch hide from tenant
    admins: a node_id from a tenant admin is PERMISSION_DENIED, its own tenant still works."""
    channel, _ = seeded
    configs = config_pb2_grpc.ConfigServiceStub(channel)
    admin, md = as_caller(ADMIN), as_caller(TENANT_ADMIN_A)
    await configs.SetConfig(
        cpb.SetConfigRequest(
            key="email.smtp_port",
            scope=cpb.CONFIG_SCOPE_NODE,
            node_id="node-7",
            value=cpb.ConfigValue(int_value=2525),
        ),
        metadata=admin,
    )
    node = {"tenant_id": TENANT_A, "node_id": "node-7"}
    seen = await configs.ResolveConfig(
        cpb.ResolveConfigRequest(key="email.smtp_port", **node), metadata=admin
    )
    assert (seen.value.int_value, seen.source_scope) == (2525, cpb.CONFIG_SCOPE_NODE)
    for resolve in (
        configs.ResolveConfig(cpb.ResolveConfigRequest(key="email.smtp_port", **node), metadata=md),
        configs.ResolveConfigs(cpb.ResolveConfigsRequest(**node), metadata=md),
        configs.ResolveConfigs(
            cpb.ResolveConfigsRequest(keys=["email.smtp_port"], **node), metadata=md
        ),
    ):
        failure = await expect_error(resolve, grpc.StatusCode.PERMISSION_DENIED)
        assert failure.reason == "NODE_SCOPE_NOT_ALLOWED"
        assert "2525" not in failure.message
    own = await configs.ResolveConfigs(cpb.ResolveConfigsRequest(tenant_id=TENANT_A), metadata=md)
    assert own.configs
    assert all(c.source_scope != cpb.CONFIG_SCOPE_NODE for c in own.configs)
    port = next(c for c in own.configs if c.key == "email.smtp_port")
    assert port.value.int_value != 2525
