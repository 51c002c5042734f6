"""Server start-up, health and shutdown as an operator sees them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import App
from server.rpc.pipeline import AllowAll
from server.settings import Settings, SettingsError
from tests.grpcurl_server import PLATFORM_ADMIN, free_port, start_server, stop_server


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PLATFORM_ADMIN_LISTEN": "nowhere"}, "PLATFORM_ADMIN_LISTEN"),
        ({"PLATFORM_ADMIN_POOL_MAX": "zero"}, "PLATFORM_ADMIN_POOL_MAX"),
        (
            {"PLATFORM_ADMIN_POOL_MIN": "20", "PLATFORM_ADMIN_POOL_MAX": "5"},
            "PLATFORM_ADMIN_POOL_MIN",
        ),
        ({"PLATFORM_ADMIN_LOG_FORMAT": "xml"}, "PLATFORM_ADMIN_LOG_FORMAT"),
    ],
)
def test_bad_settings_are_named(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_serve_refuses_bad_settings_with_a_clear_message():
    env = {**os.environ, "PLATFORM_ADMIN_LISTEN": "127.0.0.1:notaport"}
    done = subprocess.run(
        [PLATFORM_ADMIN, "serve"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "PLATFORM_ADMIN_LISTEN" in done.stderr and "HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


async def test_health_is_not_serving_while_the_database_is_unreachable(settings):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    app = App(
        replace(settings, pool_acquire_timeout_s=0.5),
        dead,
        health_interval_s=0.2,
        authorizer=AllowAll(),
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            named = await health.Check(
                health_pb2.HealthCheckRequest(service="platform_admin.v1.ConfigService")
            )
            assert named.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(grace=0)


async def test_health_serves_once_the_database_answers(app, channel):
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_stops_the_server_cleanly(db_url, tmp_path):
    server = start_server(db_url, tmp_path)
    assert server.call("platform_admin.v1.ConfigService/ListConfigKeys")["keys"]
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert "shutting down" in server.log()
    assert stop_server(server) == 0


async def test_unreachable_database_gives_unavailable_not_internal(settings):
    from platform_admin.v1 import config_pb2, config_pb2_grpc

    from tests.helpers import expect_error

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    app = App(replace(settings, pool_acquire_timeout_s=0.5), dead, authorizer=AllowAll())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            started = asyncio.get_running_loop().time()
            await expect_error(
                stub.SetConfig(
                    config_pb2.SetConfigRequest(
                        key="global.password_min_length",
                        scope=config_pb2.CONFIG_SCOPE_PLATFORM,
                        value=config_pb2.ConfigValue(int_value=14),
                    )
                ),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        await app.stop(grace=0)
