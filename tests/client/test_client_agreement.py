"""Property: the local answers equal EvaluateFlag / ResolveConfig for random flags and rows."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin_client import Client, Scope

from server.app import App
from tests.client.support import Recorder, client_for, eventually

TENANTS = ["01JA0000000000000000000AAA", "01JB0000000000000000000BBB", "01JC0000000000000000000CCC"]
NODES = ["node-1", "node-2"]
OVERRIDES = [
    flag_pb2.TENANT_OVERRIDE_ENABLED,
    flag_pb2.TENANT_OVERRIDE_DISABLED,
    flag_pb2.TENANT_OVERRIDE_INHERIT,
]
_SCOPE = {
    Scope.PLATFORM: config_pb2.CONFIG_SCOPE_PLATFORM,
    Scope.TENANT: config_pb2.CONFIG_SCOPE_TENANT,
    Scope.NODE: config_pb2.CONFIG_SCOPE_NODE,
}
_FROM_PROTO = {v: k for k, v in _SCOPE.items()}
# key -> (scopes it may be set at, values to draw from)
KEYS = {
    "global.session_idle_minutes": ((Scope.PLATFORM, Scope.TENANT), st.integers(1, 1440)),
    "global.mfa_required_default": ((Scope.PLATFORM, Scope.TENANT), st.booleans()),
    "email.smtp_port": ((Scope.PLATFORM, Scope.NODE), st.integers(1, 65535)),
    "email.smtp_host": (
        (Scope.PLATFORM, Scope.NODE),
        st.sampled_from(["relay.local", "smtp.example.com", "mx1"]),
    ),
}

FLAG = st.tuples(
    st.booleans(),  # default
    st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(OVERRIDES)), max_size=5),
    st.booleans(),  # archived at the end
)


@st.composite
def config_write(draw: st.DrawFn) -> tuple[str, Scope, str, str, int | bool | str, bool]:
    key = draw(st.sampled_from(sorted(KEYS)))
    scopes, values = KEYS[key]
    scope = draw(st.sampled_from(scopes))
    tenant = draw(st.sampled_from(TENANTS)) if scope is Scope.TENANT else ""
    node = draw(st.sampled_from(NODES)) if scope is Scope.NODE else ""
    return key, scope, tenant, node, draw(values), draw(st.booleans())


@pytest.fixture
async def watching(app: App) -> AsyncIterator[tuple[Client, Recorder]]:
    async with client_for(app.port) as client:
        assert await client.ready(15)
        seen = Recorder()
        client.on_change(seen)
        yield client, seen


def _value(message: config_pb2.ConfigValue) -> int | bool | str:
    kind = message.WhichOneof("kind")
    assert kind is not None
    value: int | bool | str = getattr(message, kind)
    return value


def _proto_value(value: int | bool | str) -> config_pb2.ConfigValue:
    if isinstance(value, bool):
        return config_pb2.ConfigValue(bool_value=value)
    if isinstance(value, int):
        return config_pb2.ConfigValue(int_value=value)
    return config_pb2.ConfigValue(string_value=value)


_numbers = itertools.count()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flags=st.lists(FLAG, min_size=1, max_size=3), writes=st.lists(config_write(), max_size=5))
async def test_local_answers_agree_with_the_rpcs(
    watching: tuple[Client, Recorder],
    channel: grpc.aio.Channel,
    flags: list[tuple[bool, list[tuple[str, int]], bool]],
    writes: list[tuple[str, Scope, str, str, int | bool | str, bool]],
) -> None:
    client, seen = watching
    flag_stub = flag_pb2_grpc.FlagServiceStub(channel)
    config_stub = config_pb2_grpc.ConfigServiceStub(channel)
    expected: dict[tuple[str, str], int] = {}  # (kind, identity) -> last version written

    keys = []
    for default, overrides, archived in flags:
        key = f"prop.f{next(_numbers)}"
        keys.append(key)
        made = await flag_stub.CreateFlag(
            flag_pb2.CreateFlagRequest(key=key, default_enabled=default)
        )
        etag = made.flag.etag
        for tenant, override in overrides:
            # Lower-case on the wire half the time: the server canonicalises, so must we.
            done = await flag_stub.SetTenantOverride(
                flag_pb2.SetTenantOverrideRequest(
                    key=key, tenant_id=tenant.lower(), override=override
                )
            )
            etag = done.flag.etag
        if archived:
            etag = (await flag_stub.ArchiveFlag(flag_pb2.ArchiveFlagRequest(key=key))).flag.etag
        expected[("flag", key)] = int(etag)

    for key, scope, tenant, node, value, archive in writes:
        target = {"key": key, "scope": _SCOPE[scope], "tenant_id": tenant, "node_id": node}
        request = config_pb2.SetConfigRequest(**target, value=_proto_value(value))
        try:
            done = await config_stub.SetConfig(request)
        except grpc.aio.AioRpcError as exc:  # archived by an earlier example: restore it
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc
            await config_stub.UnarchiveConfig(config_pb2.UnarchiveConfigRequest(**target))
            done = await config_stub.SetConfig(request)
        etag = done.config.etag
        if archive:
            archived = await config_stub.ArchiveConfig(config_pb2.ArchiveConfigRequest(**target))
            etag = archived.config.etag
        expected[("config", f"{key}|{scope}|{tenant}|{node}")] = int(etag)

    def caught_up() -> bool:
        have: dict[tuple[str, str], int] = {}
        with seen.lock:
            for c in seen.changes:
                if c.state is None:
                    continue
                if c.kind == "flag":
                    have[("flag", c.key)] = c.state.version
                else:
                    s = c.state
                    ident = f"{s.key}|{s.scope}|{s.tenant_id or ''}|{s.node_id or ''}"  # type: ignore[union-attr]
                    have[("config", ident)] = s.version
        return all(have.get(k, 0) >= v for k, v in expected.items())

    await eventually(caught_up, what="the client to see every write")

    for key in keys:
        for tenant in [*TENANTS, "01JZ0000000000000000000ZZZ"]:
            for asked in (tenant, tenant.lower()):
                answer = await flag_stub.EvaluateFlag(
                    flag_pb2.EvaluateFlagRequest(key=key, tenant_id=asked)
                )
                local = client.evaluate(key, asked)
                assert (local.enabled, local.reason.value) == (
                    answer.enabled,
                    flag_pb2.EvaluationReason.Name(answer.reason).removeprefix(
                        "EVALUATION_REASON_"
                    ),
                ), (key, asked)
                assert client.is_enabled(key, asked) is answer.enabled

    for key in KEYS:
        for tenant in ["", *TENANTS]:
            for node in ["", *NODES]:
                answer = await config_stub.ResolveConfig(
                    config_pb2.ResolveConfigRequest(key=key, tenant_id=tenant, node_id=node)
                )
                local = client.resolve(key, tenant or None, node or None)
                assert local.value == _value(answer.value), (key, tenant, node)
                assert type(local.value) is type(_value(answer.value))
                assert local.scope == _FROM_PROTO.get(answer.source_scope), (key, tenant, node)
