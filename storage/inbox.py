"""The inbox table: each consumed message recorded once, in its effect's transaction.

:func:`claim` inserts the message's row first thing in the transaction that applies it:
a message already recorded (redelivered, or re-published with the same Nats-Msg-Id)
conflicts and the caller applies nothing. A concurrent copy of the same message on
another replica waits on the primary key until the first commits, then conflicts too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import class_row

from storage import retention
from storage.db import Database
from storage.relay import bounded_error

RETENTION = timedelta(days=7)
# Arbitrary constant shared by every replica: "inbox retention".
PRUNE_LOCK = 0x5041_494E_4258_0001
MAX_ID_CHARS = 256

_CLAIM = """
INSERT INTO inbox (id, subject, stream_seq, processed_at)
VALUES (%s, %s, %s, clock_timestamp())
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
_MALFORMED = """
INSERT INTO inbox (id, subject, stream_seq, processed_at, outcome, last_error)
VALUES (%s, %s, %s, clock_timestamp(), 'malformed', %s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
_GET = """
SELECT id, subject, stream_seq, received_at, processed_at, outcome, last_error
  FROM inbox WHERE id = %s
"""
_PRUNE = """
DELETE FROM inbox
 WHERE id = ANY(ARRAY(SELECT id FROM inbox
                       WHERE received_at < %(before)s
                       ORDER BY received_at
                       LIMIT %(limit)s))
"""


@dataclass(frozen=True)
class InboxRow:
    id: str
    subject: str
    stream_seq: int | None
    received_at: datetime
    processed_at: datetime | None
    outcome: str
    last_error: str | None


async def claim(
    conn: psycopg.AsyncConnection, message_id: str, subject: str, stream_seq: int | None
) -> bool:
    """Records the message in the caller's transaction; False when it was recorded before."""
    cur = await conn.execute(_CLAIM, (message_id, subject[:200], stream_seq))
    return await cur.fetchone() is not None


async def record_malformed(
    db: Database, message_id: str, subject: str, stream_seq: int | None, error: str
) -> bool:
    """Records a message that cannot be applied, with why; False when recorded before."""
    async with db.read() as conn:
        cur = await conn.execute(
            _MALFORMED, (message_id, subject[:200], stream_seq, bounded_error(error))
        )
        return await cur.fetchone() is not None


async def get(db: Database, message_id: str) -> InboxRow | None:
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(InboxRow))
        await cur.execute(_GET, (message_id,))
        return await cur.fetchone()


async def prune(
    db: Database, *, older_than: timedelta = RETENTION, batch: int = 5000, max_batches: int = 0
) -> int:
    """Deletes inbox rows older than ``older_than`` (7 days) in batches; returns the count.

    A message redelivered after its row is gone would be applied again: JetStream's
    redelivery and duplicate windows are minutes, far inside the retention.
    """
    return await retention.prune_in_batches(
        db,
        lock_id=PRUNE_LOCK,
        delete_sql=_PRUNE,
        older_than=older_than,
        batch=batch,
        max_batches=max_batches,
    )
