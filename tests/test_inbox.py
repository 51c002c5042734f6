"""The inbox against a real nats-server: tenant deletions and heartbeats applied once each."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import psycopg
import pytest
from nats.aio.msg import Msg
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc, health_pb2_grpc
from platform_admin.v1 import health_pb2 as hpb
from prometheus_client import REGISTRY

from server.app import App
from server.bus import inbox as inbox_module
from tests.bus_helpers import NatsServer, publish, wait_until
from tests.watch_helpers import watch

T = "01JT0000000000000000000TTT"  # the tenant deleted
U = "01JV0000000000000000000VVV"  # a tenant that stays
PWD = "global.password_min_length"
IDLE = "global.session_idle_minutes"


@pytest.fixture(autouse=True)
def short_ack_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # A lost ack brings the message back after 1 s instead of 30 s.
    monkeypatch.setattr(inbox_module, "ACK_WAIT_S", 1.0)


def outcomes(app: App) -> list[str]:
    """Records every message's outcome as the consumer handles it."""
    assert app.bus is not None
    seen: list[str] = []
    original = app.bus.inbox.handle

    async def recording(msg: Msg) -> str:
        outcome = await original(msg)
        seen.append(outcome)
        return outcome

    app.bus.inbox.handle = recording  # type: ignore[method-assign]
    return seen


def counted(subject: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "platform_admin_inbox_messages_total", {"subject": subject, "outcome": outcome}
    )
    return value or 0.0


def flag_state(sql: psycopg.Connection, key: str) -> tuple[list[str], list[str], int]:
    row = sql.execute(
        "SELECT enabled_tenant_ids, disabled_tenant_ids, version FROM feature_flags WHERE key = %s",
        (key,),
    ).fetchone()
    assert row is not None
    return list(row[0]), list(row[1]), int(row[2])


async def seed_tenant(channel: grpc.aio.Channel) -> None:
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    configs = config_pb2_grpc.ConfigServiceStub(channel)
    for key in ("t.enabled", "t.disabled", "t.other", "t.archived"):
        await flags.CreateFlag(flag_pb2.CreateFlagRequest(key=key))
    await flags.SetTenantOverride(
        flag_pb2.SetTenantOverrideRequest(
            key="t.enabled", tenant_id=T, override=flag_pb2.TENANT_OVERRIDE_ENABLED
        )
    )
    await flags.SetTenantOverride(
        flag_pb2.SetTenantOverrideRequest(
            key="t.disabled", tenant_id=T, override=flag_pb2.TENANT_OVERRIDE_DISABLED
        )
    )
    for key in ("t.other", "t.archived"):
        await flags.SetTenantOverride(
            flag_pb2.SetTenantOverrideRequest(
                key=key, tenant_id=U, override=flag_pb2.TENANT_OVERRIDE_ENABLED
            )
        )
    await flags.SetTenantOverride(
        flag_pb2.SetTenantOverrideRequest(
            key="t.archived", tenant_id=T, override=flag_pb2.TENANT_OVERRIDE_DISABLED
        )
    )
    await flags.ArchiveFlag(flag_pb2.ArchiveFlagRequest(key="t.archived"))
    for tenant, key, value in ((T, PWD, 16), (T, IDLE, 10), (U, PWD, 20)):
        await configs.SetConfig(
            config_pb2.SetConfigRequest(
                key=key,
                scope=config_pb2.CONFIG_SCOPE_TENANT,
                tenant_id=tenant,
                value=config_pb2.ConfigValue(int_value=value),
            )
        )


def deleted(tenant: str) -> bytes:
    return json.dumps({"tenant_id": tenant}).encode()


@pytest.mark.timeout(90)
async def test_tenant_deleted_twice_and_redelivered_removes_the_tenant_exactly_once(
    bus_app: App, nats_server: NatsServer, sql: psycopg.Connection
) -> None:
    seen = outcomes(bus_app)
    assert bus_app.bus is not None
    # The first delivery's ack is lost (as if the process died right after commit), so
    # JetStream delivers the message again.
    real_ack = bus_app.bus.inbox.ack
    lost: list[Msg] = []

    async def lose_first_ack(msg: Msg) -> None:
        if not lost:
            lost.append(msg)
            return
        await real_ack(msg)

    bus_app.bus.inbox.ack = lose_first_ack  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        await seed_tenant(channel)
        before = {key: flag_state(sql, key) for key in ("t.enabled", "t.disabled", "t.other")}
        before["t.archived"] = flag_state(sql, "t.archived")
        watcher = watch(channel)
        await watcher.until(lambda w: w.snapshot_done())
        message = ("identity.tenant.deleted", deleted(T), {"Nats-Msg-Id": "tenant-deleted-T"})
        # Published twice with one Nats-Msg-Id: JetStream keeps one, the ack says duplicate.
        await publish(nats_server.url, [message, message])
        assert await wait_until(lambda: "duplicate" in seen, timeout=30), seen
        # Changed flags: each once (version + 1), the tenant gone from both lists.
        for key in ("t.enabled", "t.disabled", "t.archived"):
            enabled, disabled, version = flag_state(sql, key)
            assert T not in enabled and T not in disabled, key
            assert version == before[key][2] + 1, key
        assert flag_state(sql, "t.other") == before["t.other"]
        assert flag_state(sql, "t.archived")[0] == [U]
        # Configs of the tenant archived, one ARCHIVE history entry each, no actor.
        rows = sql.execute(
            "SELECT key, tenant_id, is_archived, version FROM platform_configs"
            " WHERE scope = 'TENANT' ORDER BY tenant_id, key"
        ).fetchall()
        assert rows == [(PWD, T, True, 2), (IDLE, T, True, 2), (PWD, U, False, 1)]
        history = sql.execute(
            "SELECT config_key, changed_by FROM config_history"
            " WHERE tenant_id = %s AND action = 'ARCHIVE' ORDER BY config_key",
            (T,),
        ).fetchall()
        assert history == [(PWD, None), (IDLE, None)]
        # WatchFlags subscribers see each flag change once.
        await watcher.until(lambda w: len(w.changes()) >= 3)
        await watcher.stop()
        assert sorted(watcher.changes()) == sorted(
            [(key, before[key][2] + 1) for key in ("t.archived", "t.disabled", "t.enabled")]
        )
    assert seen.count("applied") == 1
    inbox_rows = sql.execute("SELECT id, outcome, last_error, stream_seq FROM inbox").fetchall()
    assert inbox_rows == [("tenant-deleted-T", "applied", None, 1)]
    assert lost and lost[0].metadata.num_delivered == 1


@pytest.mark.timeout(60)
async def test_a_heartbeat_message_updates_last_heartbeat_at(
    bus_app: App, nats_server: NatsServer, sql: psycopg.Connection
) -> None:
    seen = outcomes(bus_app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        await health_pb2_grpc.HealthServiceStub(channel).CreateHealthSource(
            hpb.CreateHealthSourceRequest(
                service_id="billing", health_url="http://127.0.0.1:9/health"
            )
        )
    sql.execute("UPDATE health_sources SET last_heartbeat_at = now() - interval '1 hour'")
    await publish(
        nats_server.url,
        [("platform.heartbeat.billing", b"", None), ("platform.heartbeat.billing", b"{}", None)],
    )
    assert await wait_until(lambda: seen.count("applied") == 2, timeout=30), seen

    def age() -> float:
        row = sql.execute(
            "SELECT EXTRACT(EPOCH FROM now() - last_heartbeat_at) FROM health_sources"
        ).fetchone()
        assert row is not None
        return float(row[0])

    assert age() < 60
    # No Nats-Msg-Id: the inbox id is the stream sequence.
    ids = [r[0] for r in sql.execute("SELECT id FROM inbox ORDER BY stream_seq").fetchall()]
    assert ids == ["PLATFORM_ADMIN_INBOX:1", "PLATFORM_ADMIN_INBOX:2"]


MALFORMED: list[Callable[[int], tuple[str, bytes]]] = [
    lambda i: ("identity.tenant.deleted", b"{not json"),
    lambda i: ("identity.tenant.deleted", deleted(f"not-a-ulid-{i}")),
    lambda i: ("identity.tenant.deleted", b"{}"),
    lambda i: ("identity.tenant.deleted", b"[1, 2]"),
    lambda i: (f"platform.heartbeat.nosuch{i}", b""),
    lambda i: ("platform.heartbeat.billing", b"\xff\xfe"),
    lambda i: ("identity.tenant.deleted", deleted(U) + b"garbage"),
]


@pytest.mark.timeout(180)
async def test_malformed_messages_change_nothing_stop_nothing_and_are_counted(
    bus_app: App, nats_server: NatsServer, sql: psycopg.Connection
) -> None:
    seen = outcomes(bus_app)
    tenants = [f"01JM{i:022d}" for i in range(25)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        await health_pb2_grpc.HealthServiceStub(channel).CreateHealthSource(
            hpb.CreateHealthSourceRequest(
                service_id="billing", health_url="http://127.0.0.1:9/health"
            )
        )
        await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="m.flag"))
        for tenant in [*tenants, U]:
            await flags.SetTenantOverride(
                flag_pb2.SetTenantOverrideRequest(
                    key="m.flag", tenant_id=tenant, override=flag_pb2.TENANT_OVERRIDE_ENABLED
                )
            )
    malformed_before = sum(
        counted(s, "malformed") for s in ("identity.tenant.deleted", "platform.heartbeat.*")
    )
    items: list[tuple[str, bytes, dict[str, str] | None]] = []
    good = 0
    for i in range(550):
        if i % 11 == 0:
            if good % 2 == 0:
                items.append(("identity.tenant.deleted", deleted(tenants[good // 2]), None))
            else:
                items.append(("platform.heartbeat.billing", b"{}", None))
            good += 1
        else:
            subject, body = MALFORMED[i % len(MALFORMED)](i)
            items.append((subject, body, None))
    assert good == 50 and len(items) - good == 500
    await publish(nats_server.url, items)
    assert await wait_until(lambda: len(seen) >= 550, timeout=120), len(seen)
    assert seen.count("malformed") == 500 and seen.count("applied") == 50
    # Every malformed message is recorded with why; nothing of it was applied.
    recorded = sql.execute(
        "SELECT outcome, count(*), count(last_error) FROM inbox GROUP BY outcome ORDER BY 1"
    ).fetchall()
    assert recorded == [("applied", 50, 0), ("malformed", 500, 500)]
    reasons = {
        r[0]
        for r in sql.execute("SELECT last_error FROM inbox WHERE outcome = 'malformed'").fetchall()
    }
    assert any("JSON" in r for r in reasons) and any("ULID" in r for r in reasons)
    assert any("nosuch" in r for r in reasons)
    enabled, _, _ = flag_state(sql, "m.flag")
    assert enabled == [U], "only the 25 deleted tenants leave the list"
    malformed_after = sum(
        counted(s, "malformed") for s in ("identity.tenant.deleted", "platform.heartbeat.*")
    )
    assert malformed_after - malformed_before == 500
    # The consumer still runs: one more message is applied.
    await publish(nats_server.url, [("identity.tenant.deleted", deleted(U), None)])
    assert await wait_until(lambda: seen.count("applied") == 51, timeout=30)
    assert flag_state(sql, "m.flag")[0] == []


def test_parse_rules() -> None:
    from domain import inbox_events as rules
    from domain.errors import InvalidArgument

    assert rules.parse("identity.tenant.deleted", deleted(T.lower())) == rules.TenantDeleted(T)
    assert rules.parse("platform.heartbeat.billing", b"") == rules.Heartbeat("billing")
    for subject, body in [
        ("identity.tenant.deleted", b"null"),
        ("identity.tenant.deleted", json.dumps({"tenant_id": 5}).encode()),
        ("platform.heartbeat.", b""),
        ("platform.heartbeat.billing", b"[]"),
        ("identity.tenant.created", deleted(T)),
        ("identity.tenant.deleted", b"{" + b" " * 70_000 + b"}"),
    ]:
        with pytest.raises(InvalidArgument):
            rules.parse(subject, body)
    assert rules.subject_label("platform.heartbeat.x") == "platform.heartbeat.*"
