"""Retention with the bus: unpublished outbox rows are kept while the relay is on; inbox 7 days."""

from __future__ import annotations

import psycopg

from tests.grpcurl_server import run_command

OLD = "now() - interval '8 days'"


def seed(sql: psycopg.Connection) -> None:
    for i in range(5):
        published = "now()" if i < 3 else "NULL"
        sql.execute(
            "INSERT INTO outbox (id, subject, payload, headers, created_at, seq, sequenced_at,"
            f" published_at) VALUES (%s, 'platform_admin.flag.changed', '{{}}', '{{}}', {OLD},"
            f" nextval('outbox_seq'), {OLD}, {published})",
            (f"01JOLD{i:020d}",),
        )
    for i in range(3):
        received = OLD if i < 2 else "now()"
        sql.execute(
            f"INSERT INTO inbox (id, subject, received_at) VALUES (%s, 'identity.tenant.deleted',"
            f" {received})",
            (f"msg-{i}",),
        )


def test_prune_keeps_unpublished_rows_while_the_bus_is_on(db_url: str, sql: psycopg.Connection):
    seed(sql)
    # PLATFORM_ADMIN_NATS_URL unset: the relay is on (embedded bus), prune starts no bus.
    done = run_command(
        db_url,
        "prune",
        "--only",
        "outbox",
        "--only",
        "inbox",
        env_extra={"PLATFORM_ADMIN_NATS_URL": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "outbox: removed 3" in done.stdout
    assert "inbox: removed 2" in done.stdout
    left = sql.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
    assert left == (2,)
    assert sql.execute("SELECT id FROM inbox").fetchall() == [("msg-2",)]
    # With the bus off, retention is what it always was: old sequenced rows go.
    done = run_command(db_url, "prune", "--only", "outbox")
    assert "outbox: removed 2" in done.stdout
