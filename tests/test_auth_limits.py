"""Limits a hostile or careless caller runs into: message size, streams, page size, deadline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

import server.app
from domain.ids import new_ulid
from domain.paging import MAX_PAGE_SIZE
from tests.auth_helpers import ADMIN, as_caller, running_app, table_counts
from tests.helpers import expect_error

PWD = "global.password_min_length"


@pytest.fixture
async def configs(db_url, settings):
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        yield config_pb2_grpc.ConfigServiceStub(channel)


async def test_messages_over_the_receive_limit_are_refused_and_the_server_goes_on(configs, sql):
    before = table_counts(sql)
    huge = pb.SetConfigRequest(
        key=PWD,
        scope=pb.CONFIG_SCOPE_PLATFORM,
        value=pb.ConfigValue(int_value=16),
        description="x" * (server.app.MAX_RECEIVE_MESSAGE_BYTES + 1),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await configs.SetConfig(huge, metadata=as_caller(ADMIN))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert table_counts(sql) == before
    keys = await configs.ListConfigKeys(pb.ListConfigKeysRequest(), metadata=as_caller(ADMIN))
    assert len(keys.keys) == 9


async def test_streams_per_connection_are_capped(db_url, settings, monkeypatch):
    monkeypatch.setattr(server.app, "MAX_CONCURRENT_STREAMS", 2)
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        open_streams = [health.Watch(request) for _ in range(2)]
        for stream in open_streams:
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
        # A third stream on the same connection waits for a free slot...
        third = health.Watch(request)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(third_read := asyncio.ensure_future(third.read())), 1
            )
        # ... and gets one as soon as another stream ends.
        open_streams[0].cancel()
        first = await asyncio.wait_for(third_read, 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        third.cancel()
        open_streams[1].cancel()


def test_the_production_limits_are_set():
    options = dict(server.app.server_options(reuse_port=False))
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["grpc.max_concurrent_streams"] == 1024


async def test_page_size_is_capped(configs, sql):
    rows = [(PWD, "TENANT", new_ulid(), "16") for _ in range(MAX_PAGE_SIZE + 5)]
    with sql.cursor() as cur:
        cur.executemany(
            "INSERT INTO platform_configs (key, scope, tenant_id, value) VALUES (%s, %s, %s, %s)",
            rows,
        )
    md = as_caller(ADMIN)
    first = await configs.ListConfigs(
        pb.ListConfigsRequest(scope=pb.CONFIG_SCOPE_TENANT, page_size=2**31 - 1), metadata=md
    )
    assert len(first.configs) == MAX_PAGE_SIZE and first.next_page_token
    second = await configs.ListConfigs(
        pb.ListConfigsRequest(
            scope=pb.CONFIG_SCOPE_TENANT, page_size=2**31 - 1, page_token=first.next_page_token
        ),
        metadata=md,
    )
    assert len(second.configs) == 5 and not second.next_page_token
    await expect_error(
        configs.ListConfigs(pb.ListConfigsRequest(page_size=-1), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    )


async def test_unary_calls_get_the_server_default_deadline(db_url, settings, sql):
    deadline_s = 0.5
    assert settings.lock_timeout_ms / 1000 > 3 * deadline_s  # the deadline, not the lock, ends it
    async with (
        running_app(db_url, replace(settings, default_deadline_s=deadline_s)) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        before = table_counts(sql)
        # Another session holds the row, so the write waits on its lock.
        with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
            locker.execute(
                "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM' FOR UPDATE",
                (PWD,),
            )
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await configs.SetConfig(
                    pb.SetConfigRequest(
                        key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM, value=pb.ConfigValue(int_value=20)
                    ),
                    metadata=as_caller(ADMIN),
                )  # no client deadline: the server's applies
            elapsed = time.monotonic() - started
            locker.rollback()
        # The database wait is cut to fit the deadline (UNAVAILABLE, retry) or the deadline
        # itself fires; either way the caller hears back within it, not after lock_timeout.
        assert info.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), info.value
        assert deadline_s * 0.5 <= elapsed < deadline_s + 0.3, elapsed
        await asyncio.sleep(0.2)
        assert table_counts(sql) == before
        value = sql.execute(
            "SELECT value FROM platform_configs WHERE key = %s AND scope = 'PLATFORM'", (PWD,)
        ).fetchone()
        assert value == ("12",)
        # And the server is fine afterwards.
        got = await configs.GetConfig(
            pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM), metadata=as_caller(ADMIN)
        )
        assert got.config.value.int_value == 12
