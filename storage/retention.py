"""Batched retention deletes, safe to run on every replica at once.

Each batch is its own short transaction under a transaction-scoped advisory lock: when
another replica is pruning the same table, this one stops at once instead of competing
for rows. The cut-off is fixed at the first batch, so a job ends even while new rows keep
arriving. ``delete_sql`` takes ``%(before)s`` and ``%(limit)s`` and must delete through an
index that leads with the time column.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import LiteralString

import psycopg

from storage.db import Database, try_xact_lock

_NOW = "SELECT now()"


async def prune_in_batches(
    db: Database,
    *,
    lock_id: int,
    delete_sql: LiteralString,
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
