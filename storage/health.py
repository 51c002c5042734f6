"""Queries over health_sources and health_check_results.

Every change to a source's registration (create, update, delete) and every change of its
damped status writes an outbox row (platform_admin.health.changed) in the same
transaction. Heartbeats are one UPDATE by service_id and write nothing else. The prober
claims due sources here (FOR UPDATE SKIP LOCKED on next_check_at), and the retention job
prunes results older than 30 days in batches under an advisory lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from domain import health as rules
from domain.errors import NotFound, PermissionDenied, ResourceExhausted
from domain.etags import check_etag
from domain.events import HealthChange, HealthSource, HealthSourceChanged
from domain.health import Damping, Status
from domain.ids import HEALTH_CHECK_RESULT, HEALTH_SOURCE, new_ulid, with_prefix
from storage import outbox, retention
from storage.db import Database, fetch_one, register_unique_constraint

register_unique_constraint(
    "health_sources_service_id_key", "a health source with this service_id already exists"
)

# Arbitrary constant shared by every replica: "health results retention".
PRUNE_LOCK = 0x5041_4845_414C_0001


@dataclass(frozen=True)
class SourceRow:
    id: str
    service_id: str
    health_url: str
    last_heartbeat_at: datetime
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int
    next_check_at: datetime
    status: str | None
    status_since: datetime
    consecutive_failures: int
    consecutive_successes: int
    last_check_at: datetime | None
    last_details: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def damping(self) -> Damping:
        return Damping(
            Status(self.status) if self.status else None,
            self.consecutive_failures,
            self.consecutive_successes,
        )

    def registered(self) -> dict[str, Any]:
        """The fields the source was registered with (REGISTERED), by name: the event and
        the API message name them alike."""
        return {name: getattr(self, name) for name in REGISTERED}

    def source(self) -> HealthSource:
        """The full registration and status, as carried by its change events."""
        return HealthSource(
            id=with_prefix(HEALTH_SOURCE, self.id),
            **self.registered(),
            status=Status(self.status) if self.status else None,
            status_time=self.status_since,
            version=self.version,
            update_time=self.updated_at,
        )


@dataclass(frozen=True)
class ResultRow:
    id: str
    source_id: str
    status: str
    checked_at: datetime
    details: dict[str, Any] | None


@dataclass(frozen=True)
class Registration:
    """The fields an operator sets (validated by the servicer with domain/health.py)."""

    health_url: str
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int


# What a source was registered with: its service_id and what an operator sets.
REGISTERED = ("service_id", *(f.name for f in dataclass_fields(Registration)))


@dataclass(frozen=True)
class PlatformRow:
    """A source as GetPlatformHealth sees it, with the database clock for staleness."""

    source: SourceRow
    now: datetime


# Every column of a source, in SourceRow's order (the rows are read into it by name).
_SOURCE = ", ".join(f.name for f in dataclass_fields(SourceRow))
_INSERT = f"""
INSERT INTO health_sources (id, service_id, health_url, staleness_threshold_s,
                            check_interval_s, failure_threshold, success_threshold)
VALUES (%s, %s, %s, %s, %s, %s, %s)
RETURNING {_SOURCE}
"""
_GET = f"""
SELECT {_SOURCE}
  FROM health_sources
 WHERE id = %s
"""
_LOCK = _GET + " FOR UPDATE"
_EXISTS = "SELECT 1 FROM health_sources WHERE id = %s"
_LIST = f"""
SELECT {_SOURCE}
  FROM health_sources
 WHERE (%(after)s::text IS NULL OR service_id > %(after)s)
 ORDER BY service_id
 LIMIT %(limit)s
"""
# A changed interval takes effect at once: the next check is one new interval after now
# at the latest.
_UPDATE = f"""
UPDATE health_sources
   SET health_url = %s, staleness_threshold_s = %s, check_interval_s = %s,
       failure_threshold = %s, success_threshold = %s,
       next_check_at = LEAST(next_check_at, now() + make_interval(secs => %s)),
       version = version + 1, updated_at = now()
 WHERE id = %s
RETURNING {_SOURCE}
"""
# Results go with the source (ON DELETE CASCADE), in this same statement's transaction.
_DELETE = "DELETE FROM health_sources WHERE id = %s"
_HEARTBEAT = f"""
UPDATE health_sources SET last_heartbeat_at = now()
 WHERE service_id = %s
RETURNING {_SOURCE}
"""
_INSERT_RESULT = """
INSERT INTO health_check_results (id, source_id, status, details)
VALUES (%s, %s, %s, %s)
RETURNING id, source_id, status, checked_at, details
"""
_APPLY_RESULT = f"""
UPDATE health_sources
   SET status = %(status)s::varchar,
       status_since = CASE WHEN status IS DISTINCT FROM %(status)s::varchar THEN %(checked_at)s
                           ELSE status_since END,
       consecutive_failures = %(failures)s, consecutive_successes = %(successes)s,
       last_check_at = %(checked_at)s, last_details = %(details)s
 WHERE id = %(id)s
RETURNING {_SOURCE}
"""
# Newest first over ix_hcr_source_time (source_id, checked_at DESC); id breaks ties so the
# keyset position is exact.
LIST_RESULTS = """
SELECT id, source_id, status, checked_at, details
  FROM health_check_results
 WHERE source_id = %(source_id)s
   AND (%(start)s::timestamptz IS NULL OR checked_at >= %(start)s)
   AND (%(end)s::timestamptz IS NULL OR checked_at < %(end)s)
   AND (%(after_time)s::timestamptz IS NULL
        OR checked_at < %(after_time)s
        OR (checked_at = %(after_time)s AND id < %(after_id)s))
 ORDER BY checked_at DESC, id DESC
 LIMIT %(limit)s
"""
# GetPlatformHealth reads the sources only: the latest result is kept on each source row,
# so its cost does not grow with the result history.
PLATFORM = f"""
SELECT {_SOURCE}, now() AS db_now
  FROM health_sources
 ORDER BY service_id
"""
# Claim due sources: rows another replica is claiming right now are skipped, and a row it
# has just claimed no longer qualifies (its next_check_at moved an interval ahead).
_CLAIM = """
UPDATE health_sources AS s
   SET next_check_at = now() + make_interval(secs => s.check_interval_s)
 WHERE s.id IN (SELECT id FROM health_sources
                 WHERE next_check_at <= now()
                 ORDER BY next_check_at
                 LIMIT %s
                 FOR UPDATE SKIP LOCKED)
RETURNING s.id, s.service_id, s.health_url
"""
_PRUNE = retention.oldest_first("health_check_results", "checked_at")


def _describe(source_id: str) -> str:
    return f"health source {with_prefix(HEALTH_SOURCE, source_id)}"


def _changed(row: SourceRow, change: HealthChange) -> HealthSourceChanged:
    return HealthSourceChanged(change, row.source())


async def create(
    db: Database, service_id: str, registration: Registration, actor: str | None
) -> SourceRow:
    async def work(conn: psycopg.AsyncConnection) -> SourceRow:
        row = await fetch_one(
            conn,
            SourceRow,
            _INSERT,
            (
                new_ulid(),
                service_id,
                registration.health_url,
                registration.staleness_threshold_s,
                registration.check_interval_s,
                registration.failure_threshold,
                registration.success_threshold,
            ),
        )
        assert row is not None
        await outbox.append(conn, _changed(row, HealthChange.CREATED), actor=actor)
        return row

    return await db.transaction(work)


async def get(db: Database, source_id: str) -> SourceRow:
    row = await db.one(SourceRow, _GET, (source_id,))
    if row is None:
        raise NotFound(f"{_describe(source_id)} does not exist")
    return row


async def list_sources(db: Database, after: str | None, limit: int) -> list[SourceRow]:
    return await db.all(SourceRow, _LIST, {"after": after, "limit": limit})


async def _lock(conn: psycopg.AsyncConnection, source_id: str) -> SourceRow:
    row = await fetch_one(conn, SourceRow, _LOCK, (source_id,))
    if row is None:
        raise NotFound(f"{_describe(source_id)} does not exist")
    return row


async def update(
    db: Database,
    source_id: str,
    registration: Registration,
    fields: tuple[str, ...],
    expected_version: int | None,
    actor: str | None,
) -> SourceRow:
    """Applies the named fields of ``registration``; a no-op change bumps nothing."""

    async def work(conn: psycopg.AsyncConnection) -> SourceRow:
        current = await _lock(conn, source_id)
        check_etag(expected_version, current.version, _describe(source_id))
        merged = {
            name: getattr(registration if name in fields else current, name)
            for name in rules.MUTABLE_FIELDS
        }
        if all(merged[name] == getattr(current, name) for name in rules.MUTABLE_FIELDS):
            return current
        row = await fetch_one(
            conn,
            SourceRow,
            _UPDATE,
            (
                merged["health_url"],
                merged["staleness_threshold_s"],
                merged["check_interval_s"],
                merged["failure_threshold"],
                merged["success_threshold"],
                merged["check_interval_s"],
                source_id,
            ),
        )
        assert row is not None
        await outbox.append(conn, _changed(row, HealthChange.UPDATED), actor=actor)
        return row

    return await db.transaction(work)


async def delete(
    db: Database, source_id: str, expected_version: int | None, actor: str | None
) -> SourceRow:
    """Deletes the source and, by cascade, all its results, in one transaction."""

    async def work(conn: psycopg.AsyncConnection) -> SourceRow:
        current = await _lock(conn, source_id)
        check_etag(expected_version, current.version, _describe(source_id))
        await conn.execute(_DELETE, (source_id,))
        await outbox.append(conn, _changed(current, HealthChange.DELETED), actor=actor)
        return current

    return await db.transaction(work)


async def heartbeat(db: Database, service_id: str) -> SourceRow:
    """One autocommit UPDATE: the cheapest write there is."""
    async with db.read() as conn:
        return await heartbeat_in(conn, service_id)


async def heartbeat_in(conn: psycopg.AsyncConnection, service_id: str) -> SourceRow:
    """ReportHeartbeat's UPDATE on the caller's connection (the inbox: in its transaction)."""
    row = await fetch_one(conn, SourceRow, _HEARTBEAT, (service_id,))
    if row is None:
        raise NotFound(f"no health source has service_id {service_id!r}")
    return row


_CLAIM_PUSH = """
UPDATE health_sources
   SET last_pushed_at = clock_timestamp()
 WHERE id = %(id)s
   AND (last_pushed_at IS NULL
        OR last_pushed_at <= clock_timestamp() - make_interval(secs => %(interval)s))
RETURNING id
"""
_PUSH_WAIT = """
SELECT GREATEST(EXTRACT(EPOCH FROM last_pushed_at + make_interval(secs => %(interval)s)
                                   - clock_timestamp()), 0)::float8
  FROM health_sources WHERE id = %(id)s
"""


async def _claim_push(conn: psycopg.AsyncConnection, source_id: str, interval_s: float) -> None:
    """Takes this source's pushed-result slot, or RESOURCE_EXHAUSTED saying when it frees.

    Runs under the source's row lock: concurrent pushes queue, and only one per interval
    gets through on any replica.
    """
    if interval_s <= 0:
        return
    params = {"id": source_id, "interval": interval_s}
    cur = await conn.execute(_CLAIM_PUSH, params)
    if await cur.fetchone() is not None:
        return
    wait = await (await conn.execute(_PUSH_WAIT, params)).fetchone()
    retry_s = float(wait[0]) if wait is not None and wait[0] is not None else interval_s
    raise ResourceExhausted(
        f"at most one pushed result per {interval_s:g} s per source"
        f" (PLATFORM_ADMIN_RECORD_RESULT_MIN_INTERVAL_S); retry in {max(retry_s, 0.001):.3f} s",
        reason="CHECK_RESULT_RATE_LIMITED",
    )


async def record_result(
    db: Database,
    source_id: str,
    status: Status,
    details: dict[str, Any],
    *,
    only_service_id: str | None = None,
    actor: str | None = None,
    min_push_interval_s: float | None = None,
) -> tuple[ResultRow, SourceRow]:
    """Stores one raw result and applies flap damping to the source, atomically.

    ``only_service_id``: the caller may record only for the source of this service
    (PERMISSION_DENIED otherwise, nothing written). ``min_push_interval_s`` (pushed
    results): RESOURCE_EXHAUSTED, nothing written, if the source's previous pushed result
    is more recent than that. A change of the damped status writes an outbox row in the
    same transaction.
    """

    async def work(conn: psycopg.AsyncConnection) -> tuple[ResultRow, SourceRow]:
        current = await _lock(conn, source_id)
        if only_service_id is not None and current.service_id != only_service_id:
            raise PermissionDenied(
                f"service {only_service_id!r} may record results only for its own source"
            )
        if min_push_interval_s is not None:
            await _claim_push(conn, source_id, min_push_interval_s)
        result = await fetch_one(
            conn, ResultRow, _INSERT_RESULT, (new_ulid(), source_id, status.value, Jsonb(details))
        )
        assert result is not None
        state = rules.apply_result(
            current.damping, status, current.failure_threshold, current.success_threshold
        )
        row = await fetch_one(
            conn,
            SourceRow,
            _APPLY_RESULT,
            {
                "id": source_id,
                "status": state.status.value if state.status else None,
                "failures": state.failures,
                "successes": state.successes,
                "checked_at": result.checked_at,
                "details": Jsonb(details),
            },
        )
        assert row is not None
        if row.status != current.status:
            changed = HealthSourceChanged(
                HealthChange.STATUS_CHANGED,
                row.source(),
                previous_status=Status(current.status) if current.status else None,
                result_id=with_prefix(HEALTH_CHECK_RESULT, result.id),
            )
            await outbox.append(conn, changed, actor=actor)
        return result, row

    return await db.transaction(work)


async def list_results(
    db: Database,
    source_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[ResultRow]:
    """Results newest first; NOT_FOUND when the source does not exist."""
    after_time, after_id = after if after is not None else (None, None)
    params = {
        "source_id": source_id,
        "start": start,
        "end": end,
        "after_time": after_time,
        "after_id": after_id,
        "limit": limit,
    }
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(ResultRow))
        await cur.execute(LIST_RESULTS, params)
        rows = await cur.fetchall()
        if not rows:
            # Only an empty page pays for telling "no results" from "no such source".
            found = await (await conn.execute(_EXISTS, (source_id,))).fetchone()
            if found is None:
                raise NotFound(f"{_describe(source_id)} does not exist")
    return rows


async def platform(db: Database) -> tuple[list[SourceRow], datetime]:
    """Every source, ordered by service_id, and the database's now() for staleness."""
    async with db.read() as conn:
        cur = await conn.execute(PLATFORM)
        records = await cur.fetchall()
        if not records:
            now_row = await (await conn.execute("SELECT now()")).fetchone()
            assert now_row is not None
            return [], now_row[0]
    rows = [SourceRow(*record[:-1]) for record in records]
    return rows, records[0][-1]


@dataclass(frozen=True)
class Claimed:
    id: str
    service_id: str
    health_url: str


async def claim_due(db: Database, limit: int) -> list[Claimed]:
    """Claims up to ``limit`` due sources for this replica (one autocommit statement)."""
    return await db.all(Claimed, _CLAIM, (limit,))


# Deletes check results older than 30 days in batches (``older_than``, ``batch`` to change).
prune_results = retention.Retention(PRUNE_LOCK, _PRUNE, rules.RETENTION, 5000).prune
