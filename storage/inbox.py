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

from domain import inbox_events
from storage import configs, flags, health, retention
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
_PRUNE = retention.oldest_first("inbox", "received_at")


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


async def apply(
    db: Database,
    message_id: str,
    subject: str,
    stream_seq: int | None,
    event: inbox_events.Event,
) -> bool:
    """Records the message and applies its effect in one transaction; False when it was
    recorded before (nothing is changed then).

    The effects are the RPCs' own writes: a deleted tenant leaves every flag's lists
    (SetTenantOverride's write: version + 1, outbox row) and its TENANT-scope configs are
    archived (ArchiveConfig's write: version + 1, history, outbox row); a heartbeat is
    ReportHeartbeat's UPDATE. No actor: changed_by stays empty. NotFound (no such
    service) rolls everything back, the inbox row included.
    """

    async def work(conn: psycopg.AsyncConnection) -> bool:
        if not await claim(conn, message_id, subject, stream_seq):
            return False
        if isinstance(event, inbox_events.TenantDeleted):
            await flags.remove_tenant(conn, event.tenant_id, None)
            await configs.archive_tenant(conn, event.tenant_id, None)
        else:
            await health.heartbeat_in(conn, event.service_id)
        return True

    return await db.transaction(work)


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
    return await db.one(InboxRow, _GET, (message_id,))


# Inbox rows older than 7 days go, in batches (storage/retention.py). A message redelivered
# after its row is gone would be applied again: JetStream's redelivery and duplicate windows
# are minutes, far inside the retention.
prune = retention.Retention(PRUNE_LOCK, _PRUNE, RETENTION, 5000).prune
