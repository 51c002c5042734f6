"""Writing change events to the transactional outbox.

Every change to a config, flag or health source calls :func:`append` with the same
connection, inside the same transaction as the change: either both are committed or
neither is. The payload is the full new state, so a subscriber never needs a second
read. Sequencing and streaming of these rows live in storage/stream.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from domain.ids import new_ulid

CONFIG_CHANGED = "platform_admin.config.changed"
FLAG_CHANGED = "platform_admin.flag.changed"
HEALTH_CHANGED = "platform_admin.health.changed"


async def append(
    conn: psycopg.AsyncConnection,
    subject: str,
    payload: dict[str, Any],
    *,
    tenant_id: str | None = None,
    actor: str | None = None,
) -> str:
    """Inserts one outbox row in the caller's transaction; returns its id."""
    row_id = new_ulid()
    headers = {"changed_by": actor or ""}
    await conn.execute(
        "INSERT INTO outbox (id, tenant_id, subject, payload, headers) VALUES (%s, %s, %s, %s, %s)",
        (row_id, tenant_id, subject, Jsonb(payload), Jsonb(headers)),
    )
    return row_id
