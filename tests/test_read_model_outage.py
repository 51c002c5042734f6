"""Serving from memory while PostgreSQL is unreachable, and recovering when it returns.

The server reaches the test database through a TCP proxy on loopback that the test
closes and reopens (the machine's PostgreSQL itself keeps running): to the server this is
exactly a database that went away, connections cut and new ones refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb
from prometheus_client import REGISTRY
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.app import READ_MODEL_HEALTH, App
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.helpers import TENANT_A, TENANT_B, expect_error

PWD = "global.password_min_length"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Proxy:
    """Forwards 127.0.0.1:<port> to the database (TCP or its Unix socket); ``close`` cuts
    every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port = self.target
            if host.startswith("/"):  # the embedded server listens on a Unix socket only
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    parts = conninfo_to_dict(db_url)
    host = str(parts.get("host") or "127.0.0.1")
    proxy = Proxy(host, int(parts.get("port") or 5432))
    await proxy.open()
    yield proxy, make_conninfo(db_url, host="127.0.0.1", port=str(proxy.port))
    await proxy.close()


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def wait_health(channel: grpc.aio.Channel, service: str, status: int, within: float) -> float:
    started = time.monotonic()
    while await health(channel, service) != status:
        assert time.monotonic() - started < within, f"{service or 'server'} never became {status}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def age_metric() -> float:
    value = REGISTRY.get_sample_value("platform_admin_read_model_age_seconds")
    assert value is not None
    return value


async def test_reads_answer_from_memory_while_the_database_is_unreachable(
    proxy: tuple[Proxy, str], db_url: str, settings: Settings
):
    gate, through_proxy = proxy
    app = App(
        replace(settings, pool_acquire_timeout_s=1.0),
        through_proxy,
        health_interval_s=0.2,
        authorizer=AllowAll(),
    )
    app.read_model.stale_after_s = 1.0
    await app.start()
    # A replica that keeps its database.
    direct = App(replace(settings), db_url, authorizer=AllowAll())
    await direct.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{direct.port}") as direct_channel,
        ):
            configs = config_pb2_grpc.ConfigServiceStub(channel)
            flags = flag_pb2_grpc.FlagServiceStub(channel)
            await flags.CreateFlag(fpb.CreateFlagRequest(key="beta.ui"))
            await flags.SetTenantOverride(
                fpb.SetTenantOverrideRequest(
                    key="beta.ui", tenant_id=TENANT_A, override=fpb.TENANT_OVERRIDE_ENABLED
                )
            )
            await configs.SetConfig(
                cpb.SetConfigRequest(
                    key=PWD,
                    scope=cpb.CONFIG_SCOPE_TENANT,
                    tenant_id=TENANT_A,
                    value=cpb.ConfigValue(int_value=21),
                )
            )
            await wait_health(channel, READ_MODEL_HEALTH, SERVING, within=5)
            assert await health(channel) == SERVING

            await gate.close()  # the database is gone for this server

            # Health says so within a few intervals; the read model reports itself stale.
            await wait_health(channel, "", NOT_SERVING, within=10)
            await wait_health(channel, READ_MODEL_HEALTH, NOT_SERVING, within=10)
            assert age_metric() > 1.0

            # Every evaluate/resolve still answers, with the last state, for a while.
            for _ in range(50):
                one = await flags.EvaluateFlag(
                    fpb.EvaluateFlagRequest(key="beta.ui", tenant_id=TENANT_A), timeout=2
                )
                assert (one.enabled, one.reason) == (True, fpb.EVALUATION_REASON_TENANT_ENABLED)
                every = await flags.EvaluateFlags(
                    fpb.EvaluateFlagsRequest(tenant_id=TENANT_B), timeout=2
                )
                assert every.evaluations["beta.ui"].reason == fpb.EVALUATION_REASON_DEFAULT
                named = await flags.EvaluateFlags(
                    fpb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=["beta.ui", "gone"]),
                    timeout=2,
                )
                assert named.evaluations["beta.ui"].enabled
                assert list(named.missing_keys) == ["gone"]
                resolved = await configs.ResolveConfig(
                    cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A), timeout=2
                )
                assert resolved.value.int_value == 21
                batch = await configs.ResolveConfigs(
                    cpb.ResolveConfigsRequest(tenant_id=TENANT_A), timeout=2
                )
                assert {c.key: c.value.int_value for c in batch.configs}[PWD] == 21
            # Writes need the database: UNAVAILABLE, not a hang or INTERNAL.
            await expect_error(
                configs.SetConfig(
                    cpb.SetConfigRequest(
                        key=PWD,
                        scope=cpb.CONFIG_SCOPE_TENANT,
                        tenant_id=TENANT_A,
                        value=cpb.ConfigValue(int_value=22),
                    ),
                    timeout=10,
                ),
                grpc.StatusCode.UNAVAILABLE,
            )

            # Meanwhile another replica changes something; it arrives after the outage.
            direct_flags = flag_pb2_grpc.FlagServiceStub(direct_channel)
            await direct_flags.SetTenantOverride(
                fpb.SetTenantOverrideRequest(
                    key="beta.ui", tenant_id=TENANT_A, override=fpb.TENANT_OVERRIDE_DISABLED
                )
            )
            one = await flags.EvaluateFlag(
                fpb.EvaluateFlagRequest(key="beta.ui", tenant_id=TENANT_A), timeout=2
            )
            assert one.enabled  # still the last state this server knew

            await gate.open()
            await wait_health(channel, "", SERVING, within=15)
            await wait_health(channel, READ_MODEL_HEALTH, SERVING, within=15)
            deadline = time.monotonic() + 15
            while True:
                one = await flags.EvaluateFlag(
                    fpb.EvaluateFlagRequest(key="beta.ui", tenant_id=TENANT_A), timeout=2
                )
                if one.reason == fpb.EVALUATION_REASON_TENANT_DISABLED:
                    break
                assert time.monotonic() < deadline, "the change made during the outage never came"
                await asyncio.sleep(0.05)
            assert age_metric() < 5
    finally:
        await direct.stop(grace=0)
        await app.stop(grace=0)


async def test_a_server_started_without_its_database_refuses_reads_until_it_loads(
    proxy: tuple[Proxy, str], settings: Settings
):
    gate, through_proxy = proxy
    await gate.close()
    app = App(
        replace(settings, pool_acquire_timeout_s=0.5),
        through_proxy,
        health_interval_s=0.2,
        authorizer=AllowAll(),
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            configs = config_pb2_grpc.ConfigServiceStub(channel)
            failure = await expect_error(
                configs.ResolveConfig(cpb.ResolveConfigRequest(key=PWD), timeout=5),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert failure.reason == "READ_MODEL_NOT_LOADED"
            assert await health(channel, READ_MODEL_HEALTH) == NOT_SERVING
            await gate.open()
            deadline = time.monotonic() + 20
            while True:
                try:
                    answer = await configs.ResolveConfig(cpb.ResolveConfigRequest(key=PWD))
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline, "never loaded after the database came"
                    await asyncio.sleep(0.1)
            assert (answer.value.int_value, answer.source_scope) == (12, cpb.CONFIG_SCOPE_PLATFORM)
            await wait_health(channel, READ_MODEL_HEALTH, SERVING, within=10)
    finally:
        await app.stop(grace=0)
