"""Outbox retention and the cursor codec."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest

from domain import cursor
from domain.errors import InvalidArgument, OutOfRange
from domain.events import FlagChanged
from server.app import pool_settings
from server.settings import Settings
from storage import stream
from storage.db import Database
from tests.grpcurl_server import run_command

_AT = datetime.now(UTC)
_PAYLOAD = json.dumps(FlagChanged("f", "", False, (), (), False, 1, _AT, _AT).to_payload())


def _rows(sql: psycopg.Connection, count: int, age: str, sequenced: bool) -> None:
    sql.execute(
        "INSERT INTO outbox (id, subject, payload, headers, created_at, seq, sequenced_at)"
        " SELECT substr(md5(random()::text), 1, 26), 'platform_admin.flag.changed',"
        " %s::jsonb, '{}'::jsonb, now() - %s::interval,"
        " CASE WHEN %s THEN nextval('outbox_seq') END, CASE WHEN %s THEN now() END"
        " FROM generate_series(1, %s)",
        (_PAYLOAD, age, sequenced, sequenced, count),
    )


@pytest.fixture
async def db(db_url: str, settings: Settings) -> Database:
    database = Database(pool_settings(replace(settings), db_url))
    await database.open()
    yield database  # type: ignore[misc]
    await database.close()


async def test_prune_removes_old_sequenced_rows_in_batches_and_raises_the_watermark(
    db: Database, sql: psycopg.Connection
) -> None:
    _rows(sql, 7, "8 days", sequenced=True)
    top_old = sql.execute("SELECT max(seq) FROM outbox").fetchone()[0]
    _rows(sql, 3, "8 days", sequenced=False)  # not yet sequenced: kept
    _rows(sql, 4, "6 days", sequenced=True)  # within retention: kept
    assert await stream.prune(db, batch=3) == 7
    left = sql.execute(
        "SELECT count(*) FILTER (WHERE seq IS NULL), count(*) FILTER (WHERE seq IS NOT NULL)"
        " FROM outbox"
    ).fetchone()
    assert left == (3, 4)
    pruned_seq, pruned_at = sql.execute("SELECT pruned_seq, pruned_at FROM stream_state").fetchone()
    assert pruned_seq == top_old and pruned_at is not None
    assert await stream.prune(db) == 0
    assert sql.execute("SELECT pruned_seq FROM stream_state").fetchone()[0] == top_old
    # A cursor at the watermark still resumes; one below it has expired.
    assert len(await stream.read_after(db, top_old)) == 4
    with pytest.raises(OutOfRange) as caught:
        await stream.read_after(db, top_old - 1)
    assert caught.value.reason == "CURSOR_EXPIRED"


async def test_prune_yields_to_a_concurrent_pruner(
    db: Database, sql: psycopg.Connection, db_url: str
) -> None:
    _rows(sql, 5, "8 days", sequenced=True)
    with psycopg.connect(db_url) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (stream.PRUNE_LOCK,))
        assert await stream.prune(db) == 0
        assert sql.execute("SELECT count(*) FROM outbox").fetchone()[0] == 5
        other.rollback()
    assert await stream.prune(db) == 5


def test_prune_command(db_url: str, sql: psycopg.Connection) -> None:
    _rows(sql, 6, "10 days", sequenced=True)
    _rows(sql, 2, "1 day", sequenced=True)
    done = run_command(db_url, "prune", "--only", "outbox")
    assert done.returncode == 0, done.stderr
    assert "outbox: removed 6" in done.stdout
    assert sql.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2


def test_cursor_round_trip_and_checks() -> None:
    here, elsewhere = uuid.uuid4(), uuid.uuid4()
    text = cursor.encode(here, 42)
    assert cursor.verify(cursor.decode(text), here) == 42
    assert len(text) < 64 and "=" not in text
    with pytest.raises(OutOfRange) as caught:
        cursor.verify(cursor.decode(text), elsewhere)
    assert caught.value.reason == "CURSOR_EXPIRED"
    for bad in ("", "!!!", "AAAA", text[:-1], text + "A", "x" * 100):
        with pytest.raises(InvalidArgument) as invalid:
            cursor.verify(cursor.decode(bad), here)
        assert invalid.value.violations[0].field == "cursor"
    cursor.check_position(42, 40, 50)
    for seq, pruned, head in ((39, 40, 50), (51, 40, 50)):
        with pytest.raises(OutOfRange) as caught:
            cursor.check_position(seq, pruned, head)
        assert caught.value.reason == "CURSOR_EXPIRED"
