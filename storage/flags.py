"""Queries over feature_flags.

Every change locks the flag row (SELECT … FOR UPDATE), applies the pure rules of
domain/flags.py, writes the new state with version + 1 and appends exactly one outbox
row in the same transaction. The row lock serialises writers of one flag, so concurrent
tenant overrides never lose each other and versions are strictly increasing in commit
order. A change that would change nothing writes nothing and keeps the version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from domain.errors import AlreadyExists, FailedPrecondition, NotFound
from domain.etags import check_etag
from domain.events import FlagChanged
from domain.flags import Evaluation, Override, apply_override
from domain.read_state import FlagState
from storage import outbox
from storage.db import Database, fetch_one


@dataclass(frozen=True)
class FlagRow:
    key: str
    description: str | None
    default_enabled: bool
    enabled_tenant_ids: tuple[str, ...]
    disabled_tenant_ids: tuple[str, ...]
    is_archived: bool
    version: int
    created_at: datetime
    updated_at: datetime

    def __post_init__(self) -> None:
        # psycopg returns arrays as lists; tuples keep the row truly immutable.
        object.__setattr__(self, "enabled_tenant_ids", tuple(self.enabled_tenant_ids))
        object.__setattr__(self, "disabled_tenant_ids", tuple(self.disabled_tenant_ids))

    def evaluate(self, tenant_id: str) -> Evaluation:
        """The one evaluation rule (domain/flags.py), as the read model applies it."""
        return FlagState.from_event(self.event()).evaluate(tenant_id)

    def event(self) -> FlagChanged:
        """The flag's full state as its change event carries it."""
        return FlagChanged(
            key=self.key,
            description=self.description or "",
            default_enabled=self.default_enabled,
            enabled_tenant_ids=tuple(sorted(self.enabled_tenant_ids)),
            disabled_tenant_ids=tuple(sorted(self.disabled_tenant_ids)),
            archived=self.is_archived,
            version=self.version,
            create_time=self.created_at,
            update_time=self.updated_at,
        )


_GET = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE key = %s
"""
_LOCK = _GET + " FOR UPDATE"
_GET_MANY = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE key = ANY(%s)
"""
_LIVE = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE NOT is_archived
 ORDER BY key
"""
_LIST = """
SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
       is_archived, version, created_at, updated_at
  FROM feature_flags
 WHERE (%(show_archived)s OR NOT is_archived)
   AND (%(after_key)s::text IS NULL OR key > %(after_key)s)
 ORDER BY key
 LIMIT %(limit)s
"""
_INSERT = """
INSERT INTO feature_flags (key, description, default_enabled)
VALUES (%s, %s, %s)
ON CONFLICT (key) DO NOTHING
RETURNING key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
          is_archived, version, created_at, updated_at
"""
# clock_timestamp(): a writer that waited for the row lock stamps a later time than the
# one it waited for, so update_time follows version order.
_UPDATE = """
UPDATE feature_flags
   SET description = %(description)s,
       default_enabled = %(default_enabled)s,
       enabled_tenant_ids = %(enabled)s,
       disabled_tenant_ids = %(disabled)s,
       is_archived = %(archived)s,
       version = version + 1,
       updated_at = clock_timestamp()
 WHERE key = %(key)s
RETURNING key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,
          is_archived, version, created_at, updated_at
"""


def _missing(key: str) -> NotFound:
    return NotFound(f"flag {key} does not exist")


async def get(db: Database, key: str) -> FlagRow:
    row = await db.one(FlagRow, _GET, (key,))
    if row is None:
        raise _missing(key)
    return row


async def get_many(db: Database, keys: Sequence[str]) -> dict[str, FlagRow]:
    """The flags among ``keys`` that exist, archived or not, by key (one query)."""
    rows = await db.all(FlagRow, _GET_MANY, (list(keys),))
    return {row.key: row for row in rows}


async def live(db: Database) -> list[FlagRow]:
    """Every unarchived flag, ordered by key."""
    return await db.all(FlagRow, _LIVE)


async def list_rows(
    db: Database, *, show_archived: bool, after_key: str | None, limit: int
) -> list[FlagRow]:
    """Flags ordered by key; ``after_key`` is the keyset position of the previous page."""
    params = {"show_archived": show_archived, "after_key": after_key, "limit": limit}
    return await db.all(FlagRow, _LIST, params)


async def _lock(
    conn: psycopg.AsyncConnection, key: str, expected_version: int | None, *, live: bool
) -> FlagRow:
    """Locks the flag for this transaction; checks the caller's etag (and that it is live)."""
    row = await fetch_one(conn, FlagRow, _LOCK, (key,))
    if row is None:
        raise _missing(key)
    check_etag(expected_version, row.version, f"flag {key}")
    if live and row.is_archived:
        raise FailedPrecondition(f"flag {key} is archived; unarchive it first")
    return row


async def _write(
    conn: psycopg.AsyncConnection,
    current: FlagRow,
    actor: str | None,
    *,
    description: str | None = None,
    default_enabled: bool | None = None,
    enabled: tuple[str, ...] | None = None,
    disabled: tuple[str, ...] | None = None,
    archived: bool | None = None,
) -> FlagChanged:
    """Stores the new state (unnamed fields keep their value) and its outbox event.

    Returns the event (the flag's new state). When nothing would change it is ``current``'s
    state and nothing is written: no version bump, no outbox row.
    """
    new = {
        "key": current.key,
        "description": current.description if description is None else description,
        "default_enabled": current.default_enabled if default_enabled is None else default_enabled,
        "enabled": list(current.enabled_tenant_ids if enabled is None else enabled),
        "disabled": list(current.disabled_tenant_ids if disabled is None else disabled),
        "archived": current.is_archived if archived is None else archived,
    }
    if (
        (new["description"] or "") == (current.description or "")
        and new["default_enabled"] == current.default_enabled
        and new["enabled"] == list(current.enabled_tenant_ids)
        and new["disabled"] == list(current.disabled_tenant_ids)
        and new["archived"] == current.is_archived
    ):
        return current.event()
    updated = await fetch_one(conn, FlagRow, _UPDATE, new)
    assert updated is not None  # the row is locked by this transaction
    event = updated.event()
    await outbox.append(conn, event, actor=actor)
    return event


async def create(
    db: Database, key: str, description: str, default_enabled: bool, actor: str | None
) -> FlagChanged:
    """Inserts a flag (version 1, empty lists) and its outbox row, atomically."""

    async def work(conn: psycopg.AsyncConnection) -> FlagChanged:
        created = await fetch_one(conn, FlagRow, _INSERT, (key, description, default_enabled))
        if created is None:
            raise AlreadyExists(f"flag {key} already exists (archived flags keep their key)")
        event = created.event()
        await outbox.append(conn, event, actor=actor)
        return event

    return await db.transaction(work)


async def update(
    db: Database,
    key: str,
    *,
    description: str | None,
    default_enabled: bool | None,
    expected_version: int | None,
    actor: str | None,
) -> FlagChanged:
    """Changes description and/or default (None keeps the stored value)."""

    async def work(conn: psycopg.AsyncConnection) -> FlagChanged:
        current = await _lock(conn, key, expected_version, live=True)
        return await _write(
            conn, current, actor, description=description, default_enabled=default_enabled
        )

    return await db.transaction(work)


async def set_override(
    db: Database,
    key: str,
    tenant_id: str,
    override: Override,
    expected_version: int | None,
    actor: str | None,
) -> FlagChanged:
    """Puts ``tenant_id`` in the list ``override`` names (or in neither), atomically."""

    async def work(conn: psycopg.AsyncConnection) -> FlagChanged:
        current = await _lock(conn, key, expected_version, live=True)
        enabled, disabled = apply_override(
            current.enabled_tenant_ids, current.disabled_tenant_ids, tenant_id, override
        )
        return await _write(conn, current, actor, enabled=enabled, disabled=disabled)

    return await db.transaction(work)


async def set_archived(
    db: Database, key: str, archived: bool, expected_version: int | None, actor: str | None
) -> FlagChanged:
    """Archives or restores a flag; already in that state is a no-op."""

    async def work(conn: psycopg.AsyncConnection) -> FlagChanged:
        current = await _lock(conn, key, expected_version, live=False)
        return await _write(conn, current, actor, archived=archived)

    return await db.transaction(work)
