"""Writing change events to the transactional outbox.

Every change to a config, flag or health source calls :func:`append` with the same
connection, inside the same transaction as the change: either both are committed or
neither is. The event (domain/events.py) is the full new state, so a subscriber never
needs a second read; its JSON shape is the events module's alone. Sequencing and reading
these rows back live in storage/stream.py.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from domain import events
from domain.ids import new_ulid


async def append(
    conn: psycopg.AsyncConnection, change: events.Change, *, actor: str | None = None
) -> str:
    """Inserts one outbox row in the caller's transaction; returns its id."""
    row_id = new_ulid()
    await conn.execute(
        "INSERT INTO outbox (id, tenant_id, subject, payload, headers) VALUES (%s, %s, %s, %s, %s)",
        (
            row_id,
            change.tenant_id,
            change.subject,
            Jsonb(change.to_payload()),
            Jsonb(events.headers(actor)),
        ),
    )
    return row_id
