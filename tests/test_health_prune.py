"""Health-result retention: 30 days, batched, under an advisory lock, and `platform-admin prune`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import psycopg
import pytest

from server.app import pool_settings
from server.settings import Settings
from storage import health
from storage.db import Database
from tests.grpcurl_server import run_command

SOURCE = "01JHS00000000000000000000A"


@pytest.fixture
async def db(db_url: str, settings: Settings) -> AsyncIterator[Database]:
    database = Database(pool_settings(replace(settings), db_url))
    await database.open()
    yield database
    await database.close()


def _results(sql: psycopg.Connection, count: int, oldest_days: float, newest_days: float) -> None:
    """``count`` results spread evenly between ``oldest_days`` and ``newest_days`` ago."""
    sql.execute(
        "INSERT INTO health_check_results (id, source_id, status, checked_at, details)"
        " SELECT '0' || upper(lpad(to_hex(nextval('hcr_bench')), 25, '0')), %s, 'healthy',"
        "        now() - make_interval(secs => (%s - (%s - %s) * g / %s) * 86400), '{}'"
        "   FROM generate_series(0, %s - 1) AS g",
        (SOURCE, oldest_days, oldest_days, newest_days, max(count - 1, 1), count),
    )


@pytest.fixture
def seeded(sql: psycopg.Connection) -> psycopg.Connection:
    sql.execute("CREATE TEMPORARY SEQUENCE hcr_bench")
    sql.execute(
        "INSERT INTO health_sources (id, service_id, health_url) VALUES (%s, 'billing', %s)",
        (SOURCE, "http://127.0.0.1:1/h"),
    )
    return sql


def _ages(sql: psycopg.Connection) -> tuple[int, int]:
    row = sql.execute(
        "SELECT count(*) FILTER (WHERE checked_at < now() - interval '30 days'),"
        "       count(*) FILTER (WHERE checked_at >= now() - interval '30 days')"
        "  FROM health_check_results"
    ).fetchone()
    assert row is not None
    return row


async def test_prune_removes_results_older_than_30_days_across_many_batches(
    db: Database, seeded: psycopg.Connection
) -> None:
    _results(seeded, 1_250, 45, 30.01)  # old: just past the limit at the newest
    _results(seeded, 400, 29.99, 0)  # within retention: just inside the limit at the oldest
    assert _ages(seeded) == (1_250, 400)
    assert await health.prune_results(db, batch=100) == 1_250
    assert _ages(seeded) == (0, 400)
    assert await health.prune_results(db, batch=100) == 0
    assert _ages(seeded) == (0, 400)


async def test_prune_stops_after_max_batches(db: Database, seeded: psycopg.Connection) -> None:
    _results(seeded, 350, 40, 31)
    assert await health.prune_results(db, batch=100, max_batches=2) == 200
    assert _ages(seeded) == (150, 0)


async def test_prune_yields_to_a_concurrent_pruner(
    db: Database, seeded: psycopg.Connection, db_url: str
) -> None:
    _results(seeded, 50, 40, 31)
    with psycopg.connect(db_url) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (health.PRUNE_LOCK,))
        assert await health.prune_results(db) == 0
        assert _ages(seeded) == (50, 0)
        other.rollback()
    assert await health.prune_results(db) == 50


def test_prune_command_runs_the_health_job(db_url: str, seeded: psycopg.Connection) -> None:
    _results(seeded, 30, 60, 31)
    _results(seeded, 5, 2, 1)
    done = run_command(db_url, "prune", "--only", "health_check_results")
    assert done.returncode == 0, done.stderr
    assert "health_check_results: removed 30" in done.stdout
    assert _ages(seeded) == (0, 5)
