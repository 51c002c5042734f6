"""EventStream and SyncFlags in detail, against the in-process App: what each change sends,
keep_alive when idle, and how SyncFlags coalesces a burst."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from google.protobuf.json_format import MessageToDict
from openfeature.schemas.protobuf.flagd.evaluation.v2 import evaluation_pb2 as ev2
from openfeature.schemas.protobuf.flagd.evaluation.v2 import evaluation_pb2_grpc as ev2_grpc
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import flag_pb2_grpc

from tests.helpers import TENANT_A


async def _next(stream, timeout: float = 5.0):
    return await asyncio.wait_for(stream.read(), timeout)


async def test_event_stream_names_each_changed_key_and_its_kind(app, channel, configs):
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    stream = ev2_grpc.ServiceStub(channel).EventStream(ev2.EventStreamRequest())
    assert (await _next(stream)).type == "provider_ready"

    async def change_of(write) -> dict:
        await write
        message = await _next(stream)
        assert message.type == "configuration_change"
        return MessageToDict(message.data)["flags"]

    created = flags.CreateFlag(fpb.CreateFlagRequest(key="of.stream"))
    assert await change_of(created) == {"of.stream": {"type": "write"}}
    override = flags.SetTenantOverride(
        fpb.SetTenantOverrideRequest(
            key="of.stream", tenant_id=TENANT_A, override=fpb.TENANT_OVERRIDE_ENABLED
        )
    )
    assert await change_of(override) == {"of.stream": {"type": "update"}}
    archived = flags.ArchiveFlag(fpb.ArchiveFlagRequest(key="of.stream"))
    assert await change_of(archived) == {"of.stream": {"type": "delete"}}
    config = configs.SetConfig(
        cpb.SetConfigRequest(
            key="email.smtp_port",
            scope=cpb.CONFIG_SCOPE_PLATFORM,
            value=cpb.ConfigValue(int_value=2525),
        )
    )
    assert await change_of(config) == {"config:email.smtp_port": {"type": "update"}}
    stream.cancel()


async def test_event_stream_sends_keep_alive_when_idle(app, channel):
    app.openfeature.evaluation.keep_alive_s = 0.2  # 20 s in production
    stream = ev2_grpc.ServiceStub(channel).EventStream(ev2.EventStreamRequest())
    assert (await _next(stream)).type == "provider_ready"
    started = time.monotonic()
    assert (await _next(stream)).type == "keep_alive"
    assert (await _next(stream)).type == "keep_alive"
    assert time.monotonic() - started >= 0.3
    stream.cancel()


async def test_sync_flags_sends_the_set_at_once_and_coalesces_a_burst(app, channel):
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    stream = sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(sync_pb2.SyncFlagsRequest())
    first = json.loads((await _next(stream)).flag_configuration)
    assert {k for k in first["flags"] if not k.startswith("config:")} == set()
    # A burst of 40 writes in well under a second.
    started = time.monotonic()
    for i in range(40):
        await flags.CreateFlag(fpb.CreateFlagRequest(key=f"of.burst-{i:02d}"))
    burst_s = time.monotonic() - started
    received = []
    deadline = time.monotonic() + burst_s + 3.0
    while time.monotonic() < deadline:
        try:
            message = await _next(stream, max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        received.append(json.loads(message.flag_configuration))
        if len([k for k in received[-1]["flags"] if k.startswith("of.burst-")]) == 40:
            break
    stream.cancel()
    assert received, "no update after the burst"
    assert len([k for k in received[-1]["flags"] if k.startswith("of.burst-")]) == 40
    # At most one rendering per 0.25 s (plus the leading one), not one per write.
    assert len(received) <= burst_s / 0.25 + 2, (len(received), burst_s)
    assert len(received) < 40


async def test_unknown_selector_is_refused_with_its_name(app, channel):
    stream = sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(
        sync_pb2.SyncFlagsRequest(), metadata=(("flagd-selector", "source=files"),)
    )
    try:
        await _next(stream)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "flagd-selector" in error.details()
    else:
        raise AssertionError("an unknown selector was accepted")
