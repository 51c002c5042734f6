"""Versioned SQL migrations, applied in order under an advisory lock.

Files are ``migrations/NNNN_name.sql``. Each runs in its own transaction together with
the row that records it, so a failed migration leaves nothing behind. The session-level
advisory lock makes replicas that start together take turns: the second one finds the
work done and applies nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

SCHEMA = "platform_admin"
# Arbitrary constant shared by every replica: "platform-admin migrations".
MIGRATION_LOCK_ID = 0x5041_4D49_4752_0001
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in (Path(__file__).parent / "migrations").iterdir():
        match = _NAME_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conninfo: str) -> list[int]:
    """Applies every pending migration; returns the versions applied by this call."""
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            await conn.execute("CREATE SCHEMA IF NOT EXISTS platform_admin")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS platform_admin.schema_migrations ("
                " version INT PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM platform_admin.schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in available():
                if migration.version in done:
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                async with conn.transaction():
                    await conn.execute("SET LOCAL search_path TO platform_admin, public")
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO platform_admin.schema_migrations (version, name)"
                        " VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now
