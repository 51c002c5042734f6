"""The local copy follows the server: snapshot, changes, listeners, configs, snapshots on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin_client import Client, Reason, Scope, State, UnknownKey

from server.app import App
from tests.client.support import Recorder, client_for, eventually
from tests.helpers import TENANT_A, TENANT_B

IDLE = "global.session_idle_minutes"


@pytest.fixture
def flags(channel: grpc.aio.Channel) -> flag_pb2_grpc.FlagServiceStub:
    return flag_pb2_grpc.FlagServiceStub(channel)


async def test_snapshot_then_changes_reach_the_answers_and_the_listener_once_in_order(
    app: App, flags: flag_pb2_grpc.FlagServiceStub, configs: config_pb2_grpc.ConfigServiceStub
) -> None:
    await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="checkout.v2", default_enabled=False))
    await flags.SetTenantOverride(
        flag_pb2.SetTenantOverrideRequest(
            key="checkout.v2", tenant_id=TENANT_A, override=flag_pb2.TENANT_OVERRIDE_ENABLED
        )
    )
    async with client_for(app.port) as client:
        assert await client.ready(15)
        assert client.state is State.READY
        assert client.is_enabled("checkout.v2", TENANT_A)
        assert not client.is_enabled("checkout.v2", TENANT_B)
        assert client.evaluate("checkout.v2", TENANT_A).reason is Reason.TENANT_ENABLED
        assert client.evaluate("checkout.v2", TENANT_B).reason is Reason.DEFAULT
        assert client.is_enabled("never.created", TENANT_A, default=True)
        with pytest.raises(UnknownKey):
            client.evaluate("never.created", TENANT_A)
        assert client.config(IDLE, TENANT_A) == 30  # the key's default

        seen = Recorder()
        client.on_change(seen)
        only_idle = Recorder()
        client.on_change(only_idle, keys=[IDLE])

        await flags.UpdateFlag(flag_pb2.UpdateFlagRequest(key="checkout.v2", default_enabled=True))
        await flags.SetTenantOverride(
            flag_pb2.SetTenantOverrideRequest(
                key="checkout.v2", tenant_id=TENANT_B, override=flag_pb2.TENANT_OVERRIDE_DISABLED
            )
        )
        await configs.SetConfig(
            config_pb2.SetConfigRequest(
                key=IDLE,
                scope=config_pb2.CONFIG_SCOPE_TENANT,
                tenant_id=TENANT_A,
                value=config_pb2.ConfigValue(int_value=45),
            )
        )
        await flags.ArchiveFlag(flag_pb2.ArchiveFlagRequest(key="checkout.v2"))
        await eventually(lambda: len(seen.changes) == 4, what="four changes")
        assert seen.versions("flag") == [("checkout.v2", 3), ("checkout.v2", 4), ("checkout.v2", 5)]
        assert [c.key for c in only_idle.changes] == [IDLE]
        assert not client.is_enabled("checkout.v2", TENANT_A)
        assert client.evaluate("checkout.v2", TENANT_A).reason is Reason.ARCHIVED
        assert client.config(IDLE, TENANT_A) == 45
        assert client.resolve(IDLE, TENANT_A).scope is Scope.TENANT
        assert client.config(IDLE, TENANT_B) == 30
        await asyncio.sleep(2.5)  # idle past the STALE threshold: heartbeats keep it READY
        assert await client.ready(5)
        assert len(seen.changes) == 4  # and nothing was delivered twice


async def test_bootstrap_answers_without_the_server_then_catches_up(
    app: App, flags: flag_pb2_grpc.FlagServiceStub, tmp_path: Path
) -> None:
    await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="beta", default_enabled=True))
    path = tmp_path / "platform-admin.json"
    async with client_for(app.port) as client:
        assert await client.ready(15)
        await asyncio.to_thread(client.save_snapshot, path)

    # Nothing listens on this port: the client answers from the file and stays STALE.
    async with client_for(1, bootstrap=path) as offline:
        assert offline.is_enabled("beta", TENANT_A)
        assert offline.config(IDLE) == 30
        assert not await offline.ready(1.0)
        assert offline.state is State.STALE

    await flags.UpdateFlag(flag_pb2.UpdateFlagRequest(key="beta", default_enabled=False))
    async with client_for(app.port, bootstrap=path) as client:
        seen = Recorder()
        client.on_change(seen)
        assert client.is_enabled("beta", TENANT_A)  # the file's answer, before any message
        await eventually(lambda: not client.is_enabled("beta", TENANT_A), what="catch-up")
        assert seen.versions() == [("beta", 2)]  # resumed from the file's cursor
        assert await client.ready(15)


def test_a_corrupt_bootstrap_file_is_a_clear_error_and_a_missing_one_starts_empty(
    tmp_path: Path,
) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": 1, "flags": [{"key": "x"}]')
    with pytest.raises(ValueError, match="is not a platform-admin client snapshot"):
        Client("127.0.0.1:1", bootstrap=corrupt)
    with Client("127.0.0.1:1", bootstrap=tmp_path / "absent.json") as empty:
        assert empty.state is State.STALE
        assert empty.is_enabled("any", "01JA0000000000000000000AAA", default=True)
