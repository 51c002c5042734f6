"""Migrations: an empty database gets the whole schema; concurrent migrators are safe."""

from __future__ import annotations

import asyncio
import os
import subprocess

import psycopg
import pytest

from storage.migrate import available, migrate
from tests.grpcurl_server import PLATFORM_ADMIN

SEED_TABLES = {
    "platform_configs",
    "config_history",
    "feature_flags",
    "health_sources",
    "health_check_results",
    "outbox",
    "inbox",
}


@pytest.fixture
def empty_db(databases):
    url = databases.create_empty()
    yield url
    databases.drop(url)


def _applied(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT version FROM platform_admin.schema_migrations ORDER BY version"
        ).fetchall()
    return [r[0] for r in rows]


async def test_empty_database_gets_the_whole_corrected_schema(empty_db):
    applied = await migrate(empty_db)
    assert applied == [m.version for m in available()]
    with psycopg.connect(empty_db) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'platform_admin'"
            )
        }
        assert tables >= SEED_TABLES
        constraint = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'uq_platform_configs_identity'"
        ).fetchone()
        assert constraint is not None and "NULLS NOT DISTINCT" in constraint[0]
        columns = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'platform_admin'"
            )
        }
        for needed in [
            ("platform_configs", "node_id"),
            ("platform_configs", "version"),
            ("config_history", "node_id"),
            ("feature_flags", "version"),
            ("outbox", "seq"),
            ("outbox", "next_attempt_at"),
            ("outbox", "attempt"),
            ("outbox", "last_error"),
            ("inbox", "outcome"),
            ("inbox", "last_error"),
            ("inbox", "stream_seq"),
        ]:
            assert needed in columns
        # Retention jobs prune by time: each has an index leading with its time column.
        leading = {
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'platform_admin'"
            )
        }
        for table, column in [
            ("health_check_results", "checked_at"),
            ("outbox", "created_at"),
            ("config_history", "changed_at"),
            ("inbox", "received_at"),
        ]:
            assert any(f"ON platform_admin.{table} USING btree ({column}" in d for d in leading), (
                table,
                column,
            )
        # The relay reads unpublished rows in seq order from a partial index.
        assert any(
            "ix_outbox_relay" in d and "(seq)" in d and "published_at IS NULL" in d for d in leading
        )
        # Inbox ids are Nats-Msg-Id headers, not only ULIDs.
        conn.execute(
            "INSERT INTO platform_admin.inbox (id, subject) VALUES (%s, 'identity.tenant.deleted')",
            ("tenant-deleted-" + "x" * 200,),
        )
        (seeded,) = conn.execute("SELECT count(*) FROM platform_admin.platform_configs").fetchone()
        assert seeded == 9
        # The scope CHECK: a PLATFORM row with a tenant is refused by the database itself.
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO platform_admin.platform_configs (key, scope, tenant_id, value)"
                " VALUES ('x', 'PLATFORM', '01JA0000000000000000000AAA', '1')"
            )
    assert await migrate(empty_db) == []


async def test_two_migrators_at_once_apply_each_migration_once(empty_db):
    results = await asyncio.gather(migrate(empty_db), migrate(empty_db), migrate(empty_db))
    every = sorted(v for r in results for v in r)
    assert every == [m.version for m in available()]
    assert _applied(empty_db) == [m.version for m in available()]


def test_two_processes_migrating_together(empty_db):
    env = {**os.environ, "DATABASE_URL": empty_db}
    procs = [
        subprocess.Popen(
            [PLATFORM_ADMIN, "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    assert said[0].startswith("applied: [") and "nothing" in said[1], said
    assert _applied(empty_db) == [m.version for m in available()]
