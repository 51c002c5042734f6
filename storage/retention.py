"""Batched retention deletes, safe to run on every replica at once.

Each batch is its own short transaction under a transaction-scoped advisory lock: when
another replica is pruning the same table, this one stops at once instead of competing
for rows. The cut-off is fixed at the first batch, so a job ends even while new rows keep
arriving. ``delete_sql`` takes ``%(before)s`` and ``%(limit)s`` and must delete through an
index that leads with the time column. Each table's job is one :class:`Retention`
(outbox rows: storage/stream.py, config history: storage/configs.py, health results:
storage/health.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import LiteralString

import psycopg
from psycopg import sql

from storage.db import Database, try_xact_lock

_NOW = "SELECT now()"
_OLDEST_FIRST = sql.SQL("""
DELETE FROM {table}
 WHERE id = ANY(ARRAY(SELECT id FROM {table}
                       WHERE {time} < %(before)s
                       ORDER BY {time}
                       LIMIT %(limit)s))
""")


def oldest_first(table: LiteralString, time_column: LiteralString) -> sql.Composed:
    """The usual ``delete_sql``: one batch of ``table``'s rows older than the cut-off, by
    ``time_column`` (which an index must lead with)."""
    return _OLDEST_FIRST.format(table=sql.Identifier(table), time=sql.Identifier(time_column))


async def prune_in_batches(
    db: Database,
    *,
    lock_id: int,
    delete_sql: LiteralString | sql.Composed,
    older_than: timedelta,
    batch: int,
    max_batches: int = 0,
) -> int:
    """Deletes rows older than ``older_than``, ``batch`` at a time; returns the count."""
    total = 0
    batches = 0
    cutoff: datetime | None = None

    async def work(conn: psycopg.AsyncConnection) -> int | None:
        nonlocal cutoff
        if not await try_xact_lock(conn, lock_id):
            return None
        if cutoff is None:
            now_row = await (await conn.execute(_NOW)).fetchone()
            assert now_row is not None
            cutoff = now_row[0] - older_than
        cur = await conn.execute(delete_sql, {"before": cutoff, "limit": batch})
        return cur.rowcount

    while True:
        done = await db.transaction(work)
        if done is None:
            return total
        total += done
        batches += 1
        if done < batch or (max_batches and batches >= max_batches):
            return total


@dataclass(frozen=True)
class Retention:
    """One table's retention: its lock, its delete, how long rows stay, the batch size."""

    lock_id: int
    delete_sql: LiteralString | sql.Composed
    keep: timedelta
    batch: int

    async def prune(
        self,
        db: Database,
        *,
        older_than: timedelta | None = None,
        batch: int | None = None,
        max_batches: int = 0,
    ) -> int:
        """Deletes rows older than ``older_than`` (default ``keep``); returns the count."""
        return await prune_in_batches(
            db,
            lock_id=self.lock_id,
            delete_sql=self.delete_sql,
            older_than=self.keep if older_than is None else older_than,
            batch=self.batch if batch is None else batch,
            max_batches=max_batches,
        )
