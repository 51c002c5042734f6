"""The change stream over the outbox: sequencing, reading by seq, snapshots, retention.

Outbox rows get their ``seq`` after commit, from one sequencer at a time (see
docs/adr/0001-outbox-sequencer.md): a row that commits late gets a later seq, so
reading ``seq > position`` in seq order never skips a committed row. Everything that
reads the stream here returns typed :class:`domain.events.ChangeEvent` values (rows whose
payload does not decode are logged and skipped); nothing here knows gRPC. The LISTEN side
of the NOTIFY sent here is storage/notify.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, LiteralString, TypeVar

import psycopg
from psycopg.rows import dict_row

from domain import events
from domain.errors import OutOfRange
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from storage import retention
from storage.configs import ConfigRow
from storage.db import Database, fetch_all, try_xact_lock
from storage.flags import FlagRow

log = logging.getLogger(__name__)

# Advisory lock keys (transaction-scoped): one sequencer, one pruner at a time.
SEQUENCER_LOCK = 7_340_001
PRUNE_LOCK = 7_340_002
# The wake-up hint sent once per sequenced batch; listeners never rely on it alone.
NOTIFY_CHANNEL = "platform_admin_outbox"
RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class StreamState:
    """This database's identity (cursors name it) and the retention watermark."""

    database_id: uuid.UUID
    pruned_seq: int


class CursorExpired(OutOfRange):
    """The position can no longer be served: resync without a cursor."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="CURSOR_EXPIRED")


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
SELECT o.seq, o.id, o.subject, o.tenant_id, o.payload, o.headers, o.created_at, s.pruned_seq
  FROM stream_state s
  LEFT JOIN LATERAL (
        SELECT seq, id, subject, tenant_id, payload, headers, created_at
          FROM outbox
         WHERE seq > %(after)s
           AND (%(upto)s::bigint IS NULL OR seq <= %(upto)s)
           AND subject = ANY(%(subjects)s)
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
# domain.events.visible_to_tenant's rule, in SQL.
_CONFIG_SNAPSHOT = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))
   AND (NOT %(tenant_only)s OR scope = 'PLATFORM' OR tenant_id = %(tenant_id)s)
 ORDER BY key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, '')
"""
# Snapshot pages for watch streams, in keyset order. COLLATE "C" makes the order the code
# point order Python compares positions in (server/rpc/watch.py finds a row's page by it).
_FLAG_PAGE = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))
   AND (%(after)s::text IS NULL OR key COLLATE "C" > %(after)s)
 ORDER BY key COLLATE "C"
 LIMIT %(limit)s
"""
_CONFIG_PAGE = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))
   AND (NOT %(tenant_only)s OR scope = 'PLATFORM' OR tenant_id = %(tenant_id)s)
   AND (%(after_key)s::text IS NULL
        OR (key COLLATE "C", scope COLLATE "C", COALESCE(tenant_id, '') COLLATE "C",
            COALESCE(node_id, '') COLLATE "C")
           > (%(after_key)s, %(after_scope)s, %(after_tenant)s, %(after_node)s))
 ORDER BY key COLLATE "C", scope COLLATE "C", COALESCE(tenant_id, '') COLLATE "C",
          COALESCE(node_id, '') COLLATE "C"
 LIMIT %(limit)s
"""
# One statement per batch: the rows go and the watermark rises to the highest seq removed,
# together (a data-modifying WITH runs once, whether or not the DELETE reads it).
_PRUNE_HEAD = """
WITH doomed AS (
    SELECT id, seq FROM outbox
     WHERE created_at < %(before)s AND seq IS NOT NULL
"""
# With the bus relay on, a row is pruned only once published.
_PUBLISHED_ONLY = """
       AND published_at IS NOT NULL
"""
_PRUNE_TAIL = """
     ORDER BY created_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), raised AS (
    UPDATE stream_state
       SET pruned_seq = GREATEST(pruned_seq, (SELECT max(seq) FROM doomed)), pruned_at = now()
     WHERE EXISTS (SELECT 1 FROM doomed)
)
DELETE FROM outbox o USING doomed WHERE o.id = doomed.id
"""
_PRUNE = _PRUNE_HEAD + _PRUNE_TAIL
_PRUNE_PUBLISHED = _PRUNE_HEAD + _PUBLISHED_ONLY + _PRUNE_TAIL


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
        if not await try_xact_lock(conn, SEQUENCER_LOCK):
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
        return await head_in(conn)


async def head_in(conn: psycopg.AsyncConnection) -> int:
    """:func:`head` on the caller's connection (inside its snapshot transaction)."""
    cur = await conn.execute(_HEAD)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def state(db: Database) -> StreamState:
    row = await db.one(StreamState, _STATE)
    assert row is not None, "stream_state has its one row from the first migration"
    return row


async def read_after(
    db: Database,
    after: int,
    limit: int = 1000,
    *,
    upto: int | None = None,
    subjects: Collection[str] | None = None,
) -> list[ChangeEvent]:
    """Events with ``after < seq (<= upto)``, in seq order, at most ``limit``.

    Only subjects this version knows are read (``subjects`` narrows them further), so a
    row of a subject added by a newer release is passed over, not misread. Raises
    CursorExpired when retention has already removed events after ``after``.
    """
    params = {
        "after": after,
        "upto": upto,
        "subjects": list(events.SUBJECTS if subjects is None else subjects),
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
    return [event for r in rows if r["seq"] is not None and (event := _event(db, r)) is not None]


# Told (database, subject, seq) of every row skipped because its payload does not decode:
# a consumer whose state must not silently miss a change (the read model) reloads.
UndecodableListener = Callable[[Database, str, int], None]
undecodable_listeners: list[UndecodableListener] = []


def _event(db: Database, r: dict[str, Any]) -> ChangeEvent | None:
    try:
        change = events.decode(r["subject"], r["payload"])
    except events.UndecodableEvent as exc:
        log.error("outbox row %s (seq %d) skipped: %s", r["id"], r["seq"], exc)
        for listener in list(undecodable_listeners):
            try:
                listener(db, r["subject"], r["seq"])
            except Exception:
                log.exception("undecodable-row listener failed")
        return None
    return ChangeEvent(
        seq=r["seq"],
        id=r["id"],
        subject=r["subject"],
        tenant_id=r["tenant_id"],
        changed_by=events.changed_by(r["headers"]),
        created_at=r["created_at"],
        change=change,
    )


C = TypeVar("C", FlagChanged, ConfigChanged)


@dataclass(frozen=True)
class Snapshot(Generic[C]):
    """Every row's current state (as its change event) and the head seq of the same view."""

    head_seq: int
    changes: list[C]


# Changes committed but not yet sequenced, as of the snapshot's view (bounded: the
# sequencer keeps this short; more than the limit only happens while it is stalled).
_UNSEQUENCED_OF = "SELECT payload FROM outbox WHERE seq IS NULL AND subject = %s LIMIT 10000"
_SNAPSHOT_ATTEMPTS = 5


async def _snapshot(
    db: Database, query: LiteralString, params: dict[str, Any], row: type[FlagRow] | type[ConfigRow]
) -> tuple[int, list[Any], frozenset[Any]]:
    """Rows, the head seq of the same view, and the identities of rows whose latest change
    is in the view but not yet sequenced (it will come after the head: a stream that shows
    the row in its snapshot must not send that version again)."""
    subject = events.FLAG_CHANGED if row is FlagRow else events.CONFIG_CHANGED
    for attempt in range(_SNAPSHOT_ATTEMPTS):
        async with db.read() as conn, conn.transaction():
            # One REPEATABLE READ snapshot for rows and head: every event with seq <= head
            # is already reflected in the rows (seq is assigned after the change committed).
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            head_seq = await head_in(conn)
            rows = await fetch_all(conn, row, query, params)
            # A change committed but not yet sequenced is in the rows yet would also come
            # after head. Sequence it and take the snapshot again; under a steady stream of
            # writes there may always be one, so the last attempt names them instead.
            cur = await conn.execute(_UNSEQUENCED_OF, (subject,))
            pending = [r[0] for r in await cur.fetchall()]
        if not pending or attempt == _SNAPSHOT_ATTEMPTS - 1:
            break
        if not await sequence_batch(db):
            await asyncio.sleep(0.01 * (attempt + 1))
    unsequenced = frozenset(events.decode(subject, p).identity for p in pending)
    return head_seq, rows, unsequenced


async def flag_snapshot(db: Database, keys: Sequence[str] | None) -> Snapshot[FlagChanged]:
    """Every flag (or those among ``keys``) and the head seq of the same view."""
    params = {"keys": list(keys) if keys else None}
    head_seq, rows, _ = await _snapshot(db, _FLAG_SNAPSHOT, params, FlagRow)
    return Snapshot(head_seq, [r.event() for r in rows])


async def config_snapshot(
    db: Database, keys: Sequence[str] | None, tenant_id: str | None, tenant_only: bool
) -> Snapshot[ConfigChanged]:
    """All config rows; for a tenant-scoped caller only PLATFORM rows and its own tenant's."""
    params = {
        "keys": list(keys) if keys else None,
        "tenant_only": tenant_only,
        "tenant_id": tenant_id,
    }
    head_seq, rows, _ = await _snapshot(db, _CONFIG_SNAPSHOT, params, ConfigRow)
    return Snapshot(head_seq, [r.event() for r in rows])


# Rows per snapshot page: what one watch stream holds in memory at a time while a client
# reads its snapshot (a flag listing 10 tenants is ~1 KB as objects).
SNAPSHOT_PAGE = 25
Position = tuple[str, ...]


@dataclass(frozen=True)
class SnapshotPage(Generic[C]):
    """Rows in keyset order, exactly as of ``head_seq`` (every change with a seq up to it,
    none after). ``last`` is the position of the page's last row; None for the final page,
    which covers everything after the previous one."""

    head_seq: int
    changes: list[C]
    last: Position | None
    # Identities whose latest change the page shows but which had no seq yet (so its event
    # comes after head_seq): see _snapshot.
    unsequenced: frozenset[Any] = frozenset()


def flag_position(change: FlagChanged) -> Position:
    return (change.key,)


def config_position(change: ConfigChanged) -> Position:
    return (change.key, change.scope.value, change.tenant_id or "", change.node_id or "")


async def flag_snapshot_pages(
    db: Database, keys: Sequence[str] | None, page_size: int = SNAPSHOT_PAGE
) -> AsyncIterator[SnapshotPage[FlagChanged]]:
    """Every flag (or those among ``keys``), one short read per page: no connection or
    transaction is held while the caller writes a page to a client."""

    def params(after: Position | None) -> dict[str, Any]:
        return {
            "keys": list(keys) if keys else None,
            "after": after[0] if after else None,
            "limit": page_size,
        }

    async for page in _pages(db, _FLAG_PAGE, FlagRow, params, flag_position, page_size):
        yield page


_AFTER_CONFIG = ("after_key", "after_scope", "after_tenant", "after_node")


async def config_snapshot_pages(
    db: Database,
    keys: Sequence[str] | None,
    tenant_id: str | None,
    tenant_only: bool,
    page_size: int = SNAPSHOT_PAGE,
) -> AsyncIterator[SnapshotPage[ConfigChanged]]:
    """:func:`flag_snapshot_pages` for config rows (a tenant-scoped caller: PLATFORM rows and
    its own tenant's)."""

    def params(after: Position | None) -> dict[str, Any]:
        return {
            "keys": list(keys) if keys else None,
            "tenant_only": tenant_only,
            "tenant_id": tenant_id,
            "limit": page_size,
            **dict(zip(_AFTER_CONFIG, after or (None,) * len(_AFTER_CONFIG), strict=True)),
        }

    async for page in _pages(db, _CONFIG_PAGE, ConfigRow, params, config_position, page_size):
        yield page


async def _pages(
    db: Database,
    query: LiteralString,
    row: type[FlagRow] | type[ConfigRow],
    params: Callable[[Position | None], dict[str, Any]],
    position: Callable[[C], Position],
    page_size: int,
) -> AsyncIterator[SnapshotPage[C]]:
    """Keyset pages of ``query`` (``params(after)`` names the page), each as of its own head."""
    after: Position | None = None
    while True:
        head_seq, rows, unsequenced = await _snapshot(db, query, params(after), row)
        changes: list[C] = [r.event() for r in rows]
        full = len(rows) == page_size
        del rows  # only the page's events stay alive while the caller writes them
        after = position(changes[-1]) if full else None
        yield SnapshotPage(head_seq, changes, after, unsequenced)
        if after is None:
            return
        del changes


# Deletes sequenced outbox rows older than 7 days in batches; each batch raises the pruned
# watermark in its own statement, so a cursor is refused exactly when an event after it is
# gone. Batched and advisory-locked like every retention job (storage/retention.py). With
# the bus relay on, only published rows go (_PRUNE_PUBLISHED).
_RETENTION = retention.Retention(PRUNE_LOCK, _PRUNE, RETENTION, 1000)
_PUBLISHED_RETENTION = retention.Retention(PRUNE_LOCK, _PRUNE_PUBLISHED, RETENTION, 1000)


async def prune(
    db: Database,
    *,
    older_than: timedelta | None = None,
    batch: int | None = None,
    max_batches: int = 0,
    published_only: bool = False,
) -> int:
    """Applies the outbox retention; returns the rows removed.

    ``published_only`` (the bus relay is on): a row the relay has not published yet is kept
    whatever its age, so a long bus outage never loses a change for the bus's subscribers.
    """
    job = _PUBLISHED_RETENTION if published_only else _RETENTION
    return await job.prune(db, older_than=older_than, batch=batch, max_batches=max_batches)
