"""The change stream over the outbox: sequencing, reading by seq, snapshots, retention.

Outbox rows get their ``seq`` after commit, from one sequencer at a time (see
docs/adr/0001-outbox-sequencer.md): a row that commits late gets a later seq, so
reading ``seq > position`` in seq order never skips a committed row. Everything that
reads the stream here returns :class:`ChangeEvent` values; nothing here knows gRPC.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from domain.errors import OutOfRange
from storage import outbox
from storage.db import Database

# Advisory lock keys (transaction-scoped): one sequencer, one pruner at a time.
SEQUENCER_LOCK = 7_340_001
PRUNE_LOCK = 7_340_002
# The wake-up hint sent once per sequenced batch; listeners never rely on it alone.
NOTIFY_CHANNEL = "platform_admin_outbox"
RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class ChangeEvent:
    """One sequenced outbox row: the full new state of something that changed."""

    seq: int
    subject: str
    tenant_id: str | None
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StreamState:
    """This database's identity (cursors name it) and the retention watermark."""

    database_id: uuid.UUID
    pruned_seq: int


class CursorExpired(OutOfRange):
    """The position can no longer be served: resync without a cursor."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="CURSOR_EXPIRED")


# The lock is taken in its own statement: in READ COMMITTED the next statement's
# snapshot is taken after the lock is held, so it sees every row the previous holder
# sequenced (its commit is visible before its lock is released).
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"
_ANY_UNSEQUENCED = "SELECT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL)"
# nextval runs in the outer query over the ordered subquery, so seq follows
# (created_at, id) within a batch.
_SEQUENCE = """
WITH batch AS (
    SELECT id, nextval('outbox_seq') AS seq
      FROM (SELECT id FROM outbox
             WHERE seq IS NULL
             ORDER BY created_at, id
             LIMIT %s
               FOR UPDATE) AS pending
)
UPDATE outbox o
   SET seq = batch.seq, sequenced_at = clock_timestamp()
  FROM batch
 WHERE o.id = batch.id
RETURNING o.seq
"""
_NOTIFY = "SELECT pg_notify(%s, %s)"
# The watermark counts too: once retention removed every row, the head is still there.
_HEAD = """
SELECT GREATEST((SELECT COALESCE(max(seq), 0) FROM outbox),
                (SELECT pruned_seq FROM stream_state)) AS head
"""
_STATE = "SELECT database_id, pruned_seq FROM stream_state"
# The watermark is read in the same statement (same snapshot) as the rows: a prune that
# committed removed its rows and raised the watermark together, so either both are seen
# or neither.
_AFTER = """
SELECT o.seq, o.subject, o.tenant_id, o.payload, o.created_at, s.pruned_seq
  FROM stream_state s
  LEFT JOIN LATERAL (
        SELECT seq, subject, tenant_id, payload, created_at
          FROM outbox
         WHERE seq > %(after)s
           AND (%(upto)s::bigint IS NULL OR seq <= %(upto)s)
           AND (%(subjects)s::text[] IS NULL OR subject = ANY(%(subjects)s))
         ORDER BY seq
         LIMIT %(limit)s) AS o ON TRUE
 ORDER BY o.seq
"""
_FLAG_SNAPSHOT = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))
 ORDER BY key
"""
_CONFIG_SNAPSHOT = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))
   AND (NOT %(tenant_only)s OR scope = 'PLATFORM' OR tenant_id = %(tenant_id)s)
 ORDER BY key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, '')
"""
_PRUNE = """
WITH doomed AS (
    SELECT id FROM outbox
     WHERE created_at < %(before)s AND seq IS NOT NULL
       AND (NOT %(published_only)s OR published_at IS NOT NULL)
     ORDER BY created_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM outbox o USING doomed WHERE o.id = doomed.id RETURNING o.seq
)
SELECT count(*) AS pruned, max(seq) AS top FROM gone
"""
_RAISE_WATERMARK = """
UPDATE stream_state SET pruned_seq = GREATEST(pruned_seq, %s), pruned_at = now()
"""


async def sequence_batch(db: Database, limit: int = 1000, notify: bool = True) -> int:
    """Gives the next committed, unsequenced rows their seq; returns the highest assigned.

    0 when there was nothing to do or another process holds the sequencer lock (it is
    doing the work). Safe to call from every replica at any rate.
    """
    async with db.read() as conn:
        cur = await conn.execute(_ANY_UNSEQUENCED)
        row = await cur.fetchone()
    if row is None or not row[0]:
        return 0

    async def work(conn: psycopg.AsyncConnection) -> int:
        cur = await conn.execute(_TRY_LOCK, (SEQUENCER_LOCK,))
        locked = await cur.fetchone()
        if locked is None or not locked[0]:
            return 0
        cur = await conn.execute(_SEQUENCE, (limit,))
        assigned = [r[0] for r in await cur.fetchall()]
        if not assigned:
            return 0
        top = max(assigned)
        if notify:
            await conn.execute(_NOTIFY, (NOTIFY_CHANNEL, str(top)))
        return int(top)

    return await db.transaction(work)


async def head(db: Database) -> int:
    """The highest seq assigned so far (0 when none), pruned or not."""
    async with db.read() as conn:
        cur = await conn.execute(_HEAD)
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def state(db: Database) -> StreamState:
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(StreamState))
        await cur.execute(_STATE)
        row = await cur.fetchone()
    assert row is not None, "stream_state has its one row from the first migration"
    return row


async def read_after(
    db: Database,
    after: int,
    limit: int = 1000,
    *,
    upto: int | None = None,
    subjects: Sequence[str] | None = None,
) -> list[ChangeEvent]:
    """Events with ``after < seq (<= upto)``, in seq order, at most ``limit``.

    Raises CursorExpired when retention has already removed events after ``after``.
    """
    params = {
        "after": after,
        "upto": upto,
        "subjects": list(subjects) if subjects is not None else None,
        "limit": limit,
    }
    async with db.read() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_AFTER, params)
        rows = await cur.fetchall()
    if rows and rows[0]["pruned_seq"] > after:
        raise CursorExpired(
            f"the changes after position {after} are older than the retention period"
            " and were removed; resync without a cursor"
        )
    return [
        ChangeEvent(r["seq"], r["subject"], r["tenant_id"], r["payload"], r["created_at"])
        for r in rows
        if r["seq"] is not None
    ]


@dataclass(frozen=True)
class Snapshot:
    """Every row's current state (as an outbox payload) and the head seq of the same view."""

    head_seq: int
    payloads: list[dict[str, Any]]


_UNSEQUENCED_OF = "SELECT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL AND subject = %s)"
_SNAPSHOT_ATTEMPTS = 5


async def _snapshot(db: Database, query: str, params: dict[str, Any], kind: str) -> Snapshot:
    subject = outbox.FLAG_CHANGED if kind == "flag" else outbox.CONFIG_CHANGED
    for attempt in range(_SNAPSHOT_ATTEMPTS):
        async with db.read() as conn, conn.transaction():
            # One REPEATABLE READ snapshot for rows and head: every event with seq <= head
            # is already reflected in the rows (seq is assigned after the change committed).
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = await conn.execute(_HEAD)
            head_row = await cur.fetchone()
            rows_cur = conn.cursor(row_factory=dict_row)
            await rows_cur.execute(query, params)
            rows = await rows_cur.fetchall()
            # A change committed but not yet sequenced is in the rows yet would also come
            # after head: a client resuming from this snapshot's cursor would get it twice.
            # Sequence it and take the snapshot again (a few times; versions still dedupe).
            cur = await conn.execute(_UNSEQUENCED_OF, (subject,))
            pending_row = await cur.fetchone()
        if not (pending_row and pending_row[0]) or attempt == _SNAPSHOT_ATTEMPTS - 1:
            break
        if not await sequence_batch(db):
            await asyncio.sleep(0.01 * (attempt + 1))
    head_seq = int(head_row[0]) if head_row else 0
    if kind == "flag":
        return Snapshot(head_seq, [_flag_payload(r) for r in rows])
    return Snapshot(head_seq, [_config_payload(r) for r in rows])


def _flag_payload(r: dict[str, Any]) -> dict[str, Any]:
    # The same shape as storage.flags.FlagRow.event_payload().
    return {
        "key": r["key"],
        "description": r["description"] or "",
        "default_enabled": r["default_enabled"],
        "enabled_tenant_ids": sorted(r["enabled_tenant_ids"]),
        "disabled_tenant_ids": sorted(r["disabled_tenant_ids"]),
        "archived": r["is_archived"],
        "version": r["version"],
        "create_time": r["created_at"].isoformat(),
        "update_time": r["updated_at"].isoformat(),
    }


def _config_payload(r: dict[str, Any]) -> dict[str, Any]:
    from storage.configs import ConfigRow

    return ConfigRow(**r).event_payload()


async def flag_snapshot(db: Database, keys: Sequence[str] | None) -> Snapshot:
    return await _snapshot(db, _FLAG_SNAPSHOT, {"keys": list(keys) if keys else None}, kind="flag")


async def config_snapshot(
    db: Database, keys: Sequence[str] | None, tenant_id: str | None, tenant_only: bool
) -> Snapshot:
    """All config rows; for a tenant-scoped caller only PLATFORM rows and its own tenant's."""
    params = {
        "keys": list(keys) if keys else None,
        "tenant_only": tenant_only,
        "tenant_id": tenant_id,
    }
    return await _snapshot(db, _CONFIG_SNAPSHOT, params, kind="config")


async def prune(
    db: Database,
    *,
    older_than: timedelta = RETENTION,
    batch: int = 1000,
    max_batches: int = 0,
    published_only: bool = False,
) -> int:
    """Deletes sequenced outbox rows older than ``older_than``, in batches; returns the count.

    ``published_only`` (the bus relay is on): a row the relay has not published yet is kept
    whatever its age, so a long bus outage never loses a change for the bus's subscribers.

    Each batch runs under a transaction-scoped advisory lock (a concurrent pruner on
    another replica makes this one stop) and raises the pruned watermark in the same
    transaction, so a cursor is refused exactly when an event after it is gone.
    """
    total = 0
    batches = 0

    async def work(conn: psycopg.AsyncConnection) -> int | None:
        cur = await conn.execute(_TRY_LOCK, (PRUNE_LOCK,))
        locked = await cur.fetchone()
        if locked is None or not locked[0]:
            return None
        cur = await conn.execute("SELECT now()")
        now_row = await cur.fetchone()
        assert now_row is not None
        cur = await conn.execute(
            _PRUNE,
            {
                "before": now_row[0] - older_than,
                "limit": batch,
                "published_only": published_only,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        count, top = int(row[0]), row[1]
        if top is not None:
            await conn.execute(_RAISE_WATERMARK, (top,))
        return count

    while True:
        done = await db.transaction(work)
        if done is None:
            return total
        total += done
        batches += 1
        if done < batch or (max_batches and batches >= max_batches):
            return total
