"""WatchConfigs: the same stream contract as WatchFlags, over config changes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc

from server.app import App
from server.settings import Settings
from tests.auth_helpers import ADMIN, TENANT_ADMIN_A, as_caller, running_app
from tests.helpers import TENANT_A, TENANT_B, expect_error

PLATFORM = config_pb2.CONFIG_SCOPE_PLATFORM
TENANT = config_pb2.CONFIG_SCOPE_TENANT
NODE = config_pb2.CONFIG_SCOPE_NODE
IDLE = "global.session_idle_minutes"


class ConfigStream:
    """Reads a WatchConfigs call until a condition holds."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.messages: list[config_pb2.WatchConfigsResponse] = []

    async def read_until(self, done: Any, timeout: float = 10) -> None:
        import asyncio

        async with asyncio.timeout(timeout):
            while not done(self):
                message = await self.call.read()
                assert message is not grpc.aio.EOF
                self.messages.append(message)

    def of(self, kind: str) -> list[config_pb2.Config]:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("event") == kind]

    def snapshot_done(self) -> bool:
        return any(m.WhichOneof("event") == "snapshot_end" for m in self.messages)


def _set(key: str, scope: int, value: config_pb2.ConfigValue, **target: str) -> Any:
    return config_pb2.SetConfigRequest(key=key, scope=scope, value=value, **target)


async def test_snapshot_then_typed_changes(
    app: App, configs: config_pb2_grpc.ConfigServiceStub
) -> None:
    stream = ConfigStream(configs.WatchConfigs(config_pb2.WatchConfigsRequest()))
    await stream.read_until(lambda s: s.snapshot_done())
    snapshot = {c.key: c for c in stream.of("snapshot")}
    assert len(snapshot) == 9
    assert snapshot[IDLE].value.int_value == 30
    assert snapshot[IDLE].etag == "1"
    end = stream.messages[-1]
    assert end.snapshot_end.count == 9 and end.cursor

    await configs.SetConfig(_set(IDLE, PLATFORM, config_pb2.ConfigValue(int_value=45)))
    await configs.SetConfig(
        _set("email.smtp_host", NODE, config_pb2.ConfigValue(string_value="relay"), node_id="n1")
    )
    await stream.read_until(lambda s: len(s.of("config_changed")) >= 2)
    first, second = stream.of("config_changed")
    assert (first.key, first.value.int_value, first.etag) == (IDLE, 45, "2")
    assert (second.key, second.scope, second.node_id) == ("email.smtp_host", NODE, "n1")
    assert second.value.string_value == "relay"
    stream.call.cancel()


async def test_tenant_admin_sees_platform_rows_and_its_own_tenant_only(
    db_url: str, settings: Settings
) -> None:
    async with (
        running_app(db_url, settings) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        stub = config_pb2_grpc.ConfigServiceStub(ch)
        admin = as_caller(ADMIN)
        tenant = as_caller(TENANT_ADMIN_A)
        ten = config_pb2.ConfigValue(int_value=10)
        await stub.SetConfig(_set(IDLE, TENANT, ten, tenant_id=TENANT_A), metadata=admin)
        await stub.SetConfig(_set(IDLE, TENANT, ten, tenant_id=TENANT_B), metadata=admin)
        await stub.SetConfig(
            _set("email.smtp_host", NODE, config_pb2.ConfigValue(string_value="r"), node_id="n"),
            metadata=admin,
        )
        stream = ConfigStream(stub.WatchConfigs(config_pb2.WatchConfigsRequest(), metadata=tenant))
        await stream.read_until(lambda s: s.snapshot_done())
        seen = {(c.key, c.scope, c.tenant_id) for c in stream.of("snapshot")}
        assert (IDLE, TENANT, TENANT_A) in seen
        assert all(scope == PLATFORM or t == TENANT_A for _, scope, t in seen)
        assert len(seen) == 10  # 9 PLATFORM rows and its own

        twenty = config_pb2.ConfigValue(int_value=20)
        await stub.SetConfig(_set(IDLE, TENANT, twenty, tenant_id=TENANT_B), metadata=admin)
        await stub.SetConfig(
            _set("email.smtp_host", NODE, config_pb2.ConfigValue(string_value="s"), node_id="n"),
            metadata=admin,
        )
        await stub.SetConfig(_set(IDLE, TENANT, twenty, tenant_id=TENANT_A), metadata=admin)
        await stub.SetConfig(_set(IDLE, PLATFORM, twenty), metadata=admin)
        await stream.read_until(lambda s: len(s.of("config_changed")) >= 2)
        changed = [(c.scope, c.tenant_id) for c in stream.of("config_changed")]
        assert changed == [(TENANT, TENANT_A), (PLATFORM, "")]
        stream.call.cancel()

        # Flag definitions list other tenants: tenant admins cannot watch them.
        flags = flag_pb2_grpc.FlagServiceStub(ch)
        call = flags.WatchFlags(flag_pb2.WatchFlagsRequest(), metadata=tenant)
        await expect_error(call.read(), grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize(
    ("keys", "field"), [(["no.such.key"], "keys[0]"), ([IDLE, "Bad Key"], "keys[1]")]
)
async def test_unknown_keys_are_invalid_argument(
    configs: config_pb2_grpc.ConfigServiceStub, keys: list[str], field: str
) -> None:
    call = configs.WatchConfigs(config_pb2.WatchConfigsRequest(keys=keys))
    await expect_error(call.read(), grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_keys_filter(configs: config_pb2_grpc.ConfigServiceStub) -> None:
    stream = ConfigStream(configs.WatchConfigs(config_pb2.WatchConfigsRequest(keys=[IDLE])))
    await stream.read_until(lambda s: s.snapshot_done())
    assert [c.key for c in stream.of("snapshot")] == [IDLE]
    await configs.SetConfig(
        _set("email.smtp_port", PLATFORM, config_pb2.ConfigValue(int_value=2525))
    )
    await configs.SetConfig(_set(IDLE, PLATFORM, config_pb2.ConfigValue(int_value=31)))
    await stream.read_until(lambda s: len(s.of("config_changed")) >= 1)
    assert [c.key for c in stream.of("config_changed")] == [IDLE]
    stream.call.cancel()
