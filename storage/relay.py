"""The relay's SQL: one leader at a time, the oldest unpublished rows, marks and back-off.

The relay publishes sequenced outbox rows to the bus in ``seq`` order. It needs one
PostgreSQL session of its own (:class:`RelaySession`), outside the pool, for two reasons:

* leadership is a *session-level* advisory lock held by that session: exactly one relay
  across replicas and workers works at a time, and when its process dies (or its
  connection drops) PostgreSQL releases the lock at once, so another replica takes over;
* every read and mark goes through the same session, so a relay whose session is gone
  cannot mark anything any more: it must win the lock again first.

Rows are read from the table, never from memory: after a restart or a takeover the relay
resumes from the oldest row still without ``published_at``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from storage.db import PoolSettings, fetch_all, session_options

# Arbitrary constant shared by every replica: "outbox relay leader" (session-scoped).
RELAY_LOCK = 7_340_003
# last_error is what an operator reads; a bus error message can be long.
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class PendingRow:
    """One sequenced, unpublished outbox row, as the relay sends it."""

    id: str
    seq: int
    subject: str
    tenant_id: str | None
    # The JSONB payload as text: the message body, without a decode/encode round trip.
    body: str
    changed_by: str
    attempt: int
    # Seconds until next_attempt_at (0 when due): a row that failed waits for its back-off.
    wait_s: float
    created_at: datetime


_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
_PENDING = """
SELECT id, seq, subject, tenant_id, payload::text AS body,
       COALESCE(headers->>'changed_by', '') AS changed_by, attempt,
       GREATEST(0, EXTRACT(EPOCH FROM next_attempt_at - clock_timestamp()))::float8 AS wait_s,
       created_at
  FROM outbox
 WHERE published_at IS NULL AND seq IS NOT NULL
 ORDER BY seq
 LIMIT %s
"""
_MARK = "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%s)"
# Rows up to a seq the bus already holds (published by a relay that died before marking).
_MARK_UPTO = """
UPDATE outbox SET published_at = clock_timestamp()
 WHERE published_at IS NULL AND seq IS NOT NULL AND seq <= %s
"""
_ID_OF = "SELECT id FROM outbox WHERE seq = %s"
_FAILED = """
UPDATE outbox
   SET attempt = attempt + 1,
       last_error = %(error)s,
       next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s)
 WHERE id = %(id)s
"""


def bounded_error(message: str) -> str:
    """An error message fit for ``last_error``: one line, at most MAX_ERROR_CHARS."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


class RelaySession:
    """The relay's own PostgreSQL session: its leadership lock, reads and marks."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._conn: psycopg.AsyncConnection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def acquire(self) -> bool:
        """Connects if needed and tries to take the leader lock; True when this session holds it.

        Raises psycopg errors when the database is unreachable (the caller retries).
        """
        if not self.connected:
            self._conn = await psycopg.AsyncConnection.connect(
                self.settings.conninfo,
                autocommit=True,
                options=session_options(self.settings),
                connect_timeout=max(2, self.settings.connect_timeout_s),
                application_name="platform-admin-relay",
                # A leader whose host vanished must lose the lock within seconds.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        cur = await self._connection().execute(_TRY_LOCK, (RELAY_LOCK,))
        row = await cur.fetchone()
        return bool(row and row[0])

    def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            raise psycopg.OperationalError("the relay session is closed")
        return self._conn

    async def pending(self, limit: int) -> list[PendingRow]:
        """The oldest sequenced rows without published_at, in seq order."""
        return await fetch_all(self._connection(), PendingRow, _PENDING, (limit,))

    async def mark_published(self, ids: Sequence[str]) -> None:
        if ids:
            await self._connection().execute(_MARK, (list(ids),))

    async def mark_published_upto(self, seq: int) -> int:
        """Marks every unpublished row with seq <= ``seq``; returns how many."""
        cur = await self._connection().execute(_MARK_UPTO, (seq,))
        return cur.rowcount

    async def id_of(self, seq: int) -> str | None:
        """The id of the outbox row with this seq (None: no such row, or pruned)."""
        cur = await self._connection().execute(_ID_OF, (seq,))
        row = await cur.fetchone()
        return str(row[0]) if row else None

    async def mark_failed(self, row_id: str, error: str, delay_s: float) -> None:
        """attempt + 1, last_error, and next_attempt_at ``delay_s`` from now."""
        await self._connection().execute(
            _FAILED, {"id": row_id, "error": bounded_error(error), "delay": delay_s}
        )

    async def close(self) -> None:
        """Ends the session; PostgreSQL releases the leader lock with it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
