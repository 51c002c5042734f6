"""Config history retention: 7 years, batched, advisory-locked, and `platform-admin prune`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import psycopg
import pytest

from server.app import pool_settings
from server.settings import Settings
from storage import configs
from storage.db import Database
from tests.grpcurl_server import run_command


@pytest.fixture
async def db(db_url: str, settings: Settings) -> AsyncIterator[Database]:
    database = Database(pool_settings(replace(settings), db_url))
    await database.open()
    yield database
    await database.close()


def _history(sql: psycopg.Connection, count: int, years_ago: float) -> None:
    """``count`` history entries of global.password_min_length, ``years_ago`` old (± a day)."""
    sql.execute(
        "INSERT INTO config_history (id, config_key, scope, action, new_value, changed_at)"
        " SELECT '0' || upper(lpad(to_hex(%s * 1000000 + g), 25, '0')),"
        "        'global.password_min_length', 'PLATFORM', 'SET', '12',"
        "        now() - make_interval(days => (%s * 365.25)::int) + make_interval(mins => g)"
        "   FROM generate_series(1, %s) AS g",
        (int(years_ago * 10), years_ago, count),
    )


def _ages(sql: psycopg.Connection) -> tuple[int, int]:
    row = sql.execute(
        "SELECT count(*) FILTER (WHERE changed_at < now() - %s::interval),"
        "       count(*) FILTER (WHERE changed_at >= now() - %s::interval)"
        "  FROM config_history",
        (configs.HISTORY_RETENTION, configs.HISTORY_RETENTION),
    ).fetchone()
    assert row is not None
    return row


async def test_entries_older_than_seven_years_go_newer_stay(db, sql):
    _history(sql, 1_250, 8)
    _history(sql, 300, 6.5)
    assert _ages(sql) == (1_250, 300)
    assert await configs.prune_history(db, batch=100) == 1_250
    assert _ages(sql) == (0, 300)
    assert await configs.prune_history(db, batch=100) == 0


async def test_a_replica_already_pruning_makes_this_one_stop(db, sql, db_url):
    _history(sql, 50, 8)
    with psycopg.connect(db_url) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (configs.HISTORY_PRUNE_LOCK,))
        assert await configs.prune_history(db) == 0
    assert await configs.prune_history(db) == 50


def test_prune_command_runs_the_history_job(db_url, sql):
    _history(sql, 20, 9)
    _history(sql, 5, 1)
    done = run_command(db_url, "prune", "--only", "config_history")
    assert done.returncode == 0, done.stderr
    assert "config_history: removed 20" in done.stdout
    assert _ages(sql) == (0, 5)
