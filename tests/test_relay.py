"""The outbox relay against a real nats-server: every change on JetStream once, in order."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import grpc
import nats
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from server.app import RELAY_HEALTH, App
from server.rpc.pipeline import AllowAll
from server.settings import Settings, SettingsError
from tests.bus_helpers import (
    NatsServer,
    bus_settings,
    check_delivered_once_in_order,
    churn,
    outbox_rows,
    read_stream,
    wait_until,
)
from tests.conftest import stop_or_explain
from tests.grpcurl_server import free_port, start_server, stop_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def bus_app(db_url: str, settings: Settings, nats_server: NatsServer) -> AsyncIterator[App]:
    application = App(
        bus_settings(settings, nats_server.url, probe_enabled=False), db_url, authorizer=AllowAll()
    )
    await application.start()
    yield application
    await stop_or_explain(application)


def unpublished(conninfo: str) -> int:
    with psycopg.connect(conninfo, options="-c search_path=platform_admin") as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.timeout(180)
async def test_a_thousand_changes_arrive_once_each_in_seq_order_with_headers(
    bus_app: App, db_url: str, nats_server: NatsServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        assert await churn(channel, 1000) == 1000
    assert await wait_until(lambda: unpublished(db_url) == 0, timeout=90), "rows left unpublished"
    rows = outbox_rows(db_url)
    assert len(rows) == 1000
    assert {r["subject"] for r in rows} == {
        "platform_admin.config.changed",
        "platform_admin.flag.changed",
        "platform_admin.health.changed",
    }
    received = await read_stream(nats_server.url, expect=1000, timeout=60)
    check_delivered_once_in_order(received, rows)
    # TENANT config rows carry their tenant; flags and health sources carry none.
    assert any("Platform-Admin-Tenant-Id" in r.headers for r in received)
    assert all(row["published_at"] is not None for row in rows)


async def test_the_stream_is_created_with_file_storage_and_the_duplicate_window(
    bus_app: App, nats_server: NatsServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        await flag_pb2_grpc.FlagServiceStub(channel).CreateFlag(
            flag_pb2.CreateFlagRequest(key="relay.stream-check")
        )
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert await wait_until(lambda: _has_stream(js, "PLATFORM_ADMIN"), timeout=20)
        info = await js.stream_info("PLATFORM_ADMIN")
        assert info.config.subjects == ["platform_admin.>"]
        assert str(info.config.storage) in ("file", "StorageType.FILE")
        assert info.config.duplicate_window == 300
        inbox = await js.stream_info("PLATFORM_ADMIN_INBOX")
        assert set(inbox.config.subjects or []) == {
            "identity.tenant.deleted",
            "platform.heartbeat.>",
        }
        # A publish with the same Nats-Msg-Id is dropped: what the relay relies on after a
        # lost ack or a takeover.
        ack = await js.publish(
            "platform_admin.flag.changed",
            b"{}",
            headers={"Nats-Msg-Id": "relay-test-dup"},
        )
        again = await js.publish(
            "platform_admin.flag.changed",
            b"{}",
            headers={"Nats-Msg-Id": "relay-test-dup"},
        )
        assert not ack.duplicate and again.duplicate and again.seq == ack.seq
    finally:
        await nc.close()


async def _has_stream(js: nats.js.JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
        return True
    except Exception:
        return False


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(answer.status)


@pytest.mark.timeout(120)
async def test_relay_health_follows_nats_and_the_server_keeps_serving(
    bus_app: App, db_url: str, nats_server: NatsServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        assert await wait_until(lambda: _is(channel, RELAY_HEALTH, SERVING), timeout=20), (
            "Relay never SERVING"
        )
        nats_server.kill()
        assert await wait_until(lambda: _is(channel, RELAY_HEALTH, NOT_SERVING), timeout=20)
        # The RPCs work and the overall status stays SERVING while the bus is down.
        assert await _status(channel, "") == SERVING
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="relay.while-down"), timeout=10)
        nats_server.start()
        assert await wait_until(lambda: _is(channel, RELAY_HEALTH, SERVING), timeout=30)
        # What was written meanwhile is published once the bus is back.
        assert await wait_until(lambda: unpublished(db_url) == 0, timeout=30)
    received = await read_stream(nats_server.url, expect=1, timeout=20)
    assert [json.loads(json.dumps(r.body))["key"] for r in received] == ["relay.while-down"]


async def _is(channel: grpc.aio.Channel, service: str, status: int) -> bool:
    return await _status(channel, service) == status


async def test_metrics_count_published_rows_and_relay_lag(
    bus_app: App, db_url: str, nats_server: NatsServer
) -> None:
    port = await bus_app.metrics.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
            assert await churn(channel, 10, tag="m") == 10
        assert await wait_until(lambda: unpublished(db_url) == 0, timeout=30)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            lines = (await answer.text()).splitlines()
        published = [ln for ln in lines if ln.startswith("platform_admin_relay_published_total")]
        assert published and float(published[0].split()[-1]) >= 10
        assert any(ln.startswith("platform_admin_relay_failures_total") for ln in lines)
        lag = [ln for ln in lines if ln.startswith("platform_admin_relay_lag_seconds")]
        assert lag and float(lag[0].split()[-1]) == 0.0
    finally:
        await bus_app.metrics.stop()


async def test_with_the_bus_off_nothing_is_published_and_no_relay_health(
    app: App, db_url: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await flag_pb2_grpc.FlagServiceStub(channel).CreateFlag(
            flag_pb2.CreateFlagRequest(key="relay.off")
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _status(channel, RELAY_HEALTH)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert await _status(channel, "") == SERVING
    assert app.bus is None
    assert unpublished(db_url) == 1


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PLATFORM_ADMIN_NATS_URL": "http://127.0.0.1:4222"}, "PLATFORM_ADMIN_NATS_URL"),
        ({"PLATFORM_ADMIN_NATS_URL": "nats://user:pw@h:4222"}, "PLATFORM_ADMIN_NATS_URL"),
        ({"PLATFORM_ADMIN_NATS_URL": "nats://127.0.0.1"}, "PLATFORM_ADMIN_NATS_URL"),
        ({"PLATFORM_ADMIN_NATS_STREAM": "bad.name"}, "PLATFORM_ADMIN_NATS_STREAM"),
        ({"PLATFORM_ADMIN_INBOX_STREAM": "PLATFORM_ADMIN"}, "PLATFORM_ADMIN_INBOX_STREAM"),
        (
            {"PLATFORM_ADMIN_NATS_CREDS_FILE": "/x.creds", "PLATFORM_ADMIN_NATS_TOKEN": "t"},
            "PLATFORM_ADMIN_NATS_CREDS_FILE",
        ),
        ({"PLATFORM_ADMIN_NATS_TLS_CERT_FILE": "/c.pem"}, "PLATFORM_ADMIN_NATS_TLS_CERT_FILE"),
        ({"PLATFORM_ADMIN_RELAY_MAX_BACKOFF_S": "0"}, "PLATFORM_ADMIN_RELAY_MAX_BACKOFF_S"),
        (
            {"PLATFORM_ADMIN_NATS_DUPLICATE_WINDOW_S": "60"},
            "PLATFORM_ADMIN_NATS_DUPLICATE_WINDOW_S",
        ),
    ],
)
def test_bad_bus_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_bus_settings_defaults() -> None:
    default = Settings.from_env({})
    assert default.nats_mode == "embedded" and default.bus_enabled
    assert default.nats_stream == "PLATFORM_ADMIN"
    assert default.inbox_stream == "PLATFORM_ADMIN_INBOX"
    assert default.relay_max_backoff_s == 10.0
    off = Settings.from_env({"PLATFORM_ADMIN_NATS_URL": "OFF"})
    assert off.nats_mode == "off" and not off.bus_enabled
    two = Settings.from_env({"PLATFORM_ADMIN_NATS_URL": "nats://a:4222, tls://b:4223"})
    assert two.nats_urls == ("nats://a:4222", "tls://b:4223")
    # Built in code (as tests do), settings have no bus.
    assert not Settings().bus_enabled


@pytest.mark.timeout(120)
async def test_serve_without_a_nats_url_starts_the_embedded_server_and_publishes(
    db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(
        db_url,
        tmp_path,
        env={"PLATFORM_ADMIN_NATS_URL": "", "PLATFORM_ADMIN_DATA_DIR": str(data)},
    )
    try:
        state = json.loads((data / "nats" / "server.json").read_text())
        server.call("platform_admin.v1.FlagService/CreateFlag", {"key": "relay.embedded"})
        url = f"nats://127.0.0.1:{state['port']}"
        received = await read_stream(url, expect=1, timeout=30)
        assert [r.body["key"] for r in received] == ["relay.embedded"]
        assert (data / "nats" / "store" / "jetstream").is_dir()
        health = server.call("grpc.health.v1.Health/Check", {"service": RELAY_HEALTH})
        assert health["status"] == "SERVING"
    finally:
        assert stop_server(server) == 0
    # serve stopped the nats-server it started.
    assert await wait_until(lambda: not _alive(int(state["pid"])), timeout=15)
    assert free_port()  # the machine still hands out ports (nothing leaked in a loop)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of an exited child still answers signal 0.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_settings_replace_keeps_bus_off_for_existing_fixtures(settings: Settings) -> None:
    assert not replace(settings).bus_enabled


@pytest.mark.timeout(120)
async def test_a_row_the_bus_refuses_holds_back_every_row_after_it(
    bus_app: App, db_url: str, nats_server: NatsServer, sql: psycopg.Connection
) -> None:
    """Subscribers rely on order: a failing row is retried with back-off, never overtaken."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="order.first"))
        assert await wait_until(lambda: unpublished(db_url) == 0, timeout=30)
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("PLATFORM_ADMIN")
            info.config.max_msg_size = 1_000
            await js.update_stream(info.config)
            # A change too large for the stream now, then ordinary ones behind it.
            await flags.CreateFlag(
                flag_pb2.CreateFlagRequest(key="order.big", description="x" * 1_500)
            )
            for i in range(5):
                await flags.CreateFlag(flag_pb2.CreateFlagRequest(key=f"order.after-{i}"))

            def big() -> tuple[int, str | None]:
                row = sql.execute(
                    "SELECT attempt, last_error FROM outbox WHERE payload->>'key' = 'order.big'"
                ).fetchone()
                assert row is not None
                return int(row[0]), row[1]

            assert await wait_until(lambda: big()[0] >= 2, timeout=30), big()
            assert "size" in (big()[1] or "").lower() or "maximum" in (big()[1] or "").lower()
            assert unpublished(db_url) == 6, "a row behind the failing one was published"
            info.config.max_msg_size = -1
            await js.update_stream(info.config)
        finally:
            await nc.close()
    assert await wait_until(lambda: unpublished(db_url) == 0, timeout=30)
    received = await read_stream(nats_server.url, expect=7, timeout=30)
    check_delivered_once_in_order(received, outbox_rows(db_url))
    assert [r.body["key"] for r in received][:2] == ["order.first", "order.big"]
