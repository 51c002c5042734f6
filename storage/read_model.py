"""The read model's initial load: every flag and config, and the head seq, in one snapshot.

One REPEATABLE READ transaction reads the head and both tables, so every change with
``seq <= head`` is already reflected in the rows (a seq is assigned after its change
committed); the change stream from ``head`` on brings the rest. The rows come back in
the outbox payload shape (storage/stream.py), so loading and applying events are one code
path in domain/read_model.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from storage import stream
from storage.db import Database


@dataclass(frozen=True)
class Loaded:
    head_seq: int
    flags: list[dict[str, Any]]
    configs: list[dict[str, Any]]


async def load_all(db: Database) -> Loaded:
    async with db.read() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur = await conn.execute(stream._HEAD)
        head_row = await cur.fetchone()
        rows = conn.cursor(row_factory=dict_row)
        await rows.execute(stream._FLAG_SNAPSHOT, {"keys": None})
        flags = [stream._flag_payload(r) for r in await rows.fetchall()]
        await rows.execute(
            stream._CONFIG_SNAPSHOT, {"keys": None, "tenant_only": False, "tenant_id": None}
        )
        configs = [stream._config_payload(r) for r in await rows.fetchall()]
    return Loaded(int(head_row[0]) if head_row else 0, flags, configs)
