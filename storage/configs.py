"""Queries over platform_configs and config_history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from domain import config_keys
from domain.config_keys import ConfigTarget, ConfigValue, Scope
from domain.errors import Aborted, FailedPrecondition, NotFound
from domain.etags import check_etag
from domain.events import ConfigChanged
from domain.ids import new_ulid
from storage import outbox, retention
from storage.db import Database, fetch_one


@dataclass(frozen=True)
class ConfigRow:
    key: str
    scope: str
    tenant_id: str | None
    node_id: str | None
    value: str
    description: str | None
    is_archived: bool
    version: int
    updated_at: datetime

    @property
    def typed_value(self) -> ConfigValue:
        return config_keys.deserialize(self.value)

    def event(self) -> ConfigChanged:
        """The row's full state as its change event carries it."""
        return ConfigChanged(
            key=self.key,
            scope=Scope(self.scope),
            tenant_id=self.tenant_id,
            node_id=self.node_id,
            value=self.typed_value,
            description=self.description or "",
            archived=self.is_archived,
            version=self.version,
            update_time=self.updated_at,
        )


@dataclass(frozen=True)
class HistoryRow:
    id: str
    config_key: str
    scope: str
    tenant_id: str | None
    node_id: str | None
    action: str
    old_value: str | None
    new_value: str
    changed_by: str | None
    changed_at: datetime


_GET = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE key = %s AND scope = %s AND tenant_id IS NOT DISTINCT FROM %s
   AND node_id IS NOT DISTINCT FROM %s
"""
_LOCK = _GET + " FOR UPDATE"
_LIST = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE (%(scope)s::text IS NULL OR scope = %(scope)s)
   AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
   AND (%(node_id)s::text IS NULL OR node_id = %(node_id)s)
   AND (%(show_archived)s OR NOT is_archived)
   AND (%(after_key)s::text IS NULL
        OR (key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, ''))
           > (%(after_key)s, %(after_scope)s, %(after_tenant)s, %(after_node)s))
 ORDER BY key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, '')
 LIMIT %(limit)s
"""
# clock_timestamp(), not now(): now() is when the transaction began, so a writer that
# waited for the row lock would stamp (and copy into history) a time earlier than the write
# it waited behind. The time the statement runs, under the lock, follows commit order.
_INSERT = """
INSERT INTO platform_configs (key, scope, tenant_id, node_id, value, description, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp())
ON CONFLICT ON CONSTRAINT uq_platform_configs_identity DO NOTHING
RETURNING key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
"""
_UPDATE_VALUE = """
UPDATE platform_configs
   SET value = %s, description = %s, version = version + 1, updated_at = clock_timestamp()
 WHERE key = %s AND scope = %s AND tenant_id IS NOT DISTINCT FROM %s
   AND node_id IS NOT DISTINCT FROM %s
RETURNING key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
"""
_UPDATE_ARCHIVED = """
UPDATE platform_configs
   SET is_archived = %s, version = version + 1, updated_at = clock_timestamp()
 WHERE key = %s AND scope = %s AND tenant_id IS NOT DISTINCT FROM %s
   AND node_id IS NOT DISTINCT FROM %s
RETURNING key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
"""
_LIVE_FOR = """
SELECT key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at
  FROM platform_configs
 WHERE key = ANY(%s) AND NOT is_archived
   AND (scope = 'PLATFORM'
        OR (scope = 'TENANT' AND tenant_id = %s)
        OR (scope = 'NODE' AND node_id = %s))
"""
_INSERT_HISTORY = """
INSERT INTO config_history (id, config_key, scope, tenant_id, node_id, action, old_value,
                            new_value, changed_by, changed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_HISTORY = """
SELECT id, config_key, scope, tenant_id, node_id, action, old_value, new_value, changed_by,
       changed_at
  FROM config_history
 WHERE config_key = %(key)s AND scope = %(scope)s
   AND tenant_id IS NOT DISTINCT FROM %(tenant_id)s AND node_id IS NOT DISTINCT FROM %(node_id)s
   AND (%(after_time)s::timestamptz IS NULL OR (changed_at, id) < (%(after_time)s, %(after_id)s))
 ORDER BY changed_at DESC, id DESC
 LIMIT %(limit)s
"""


def _target_params(target: ConfigTarget) -> tuple[str, str, str | None, str | None]:
    return (target.key, target.scope.value, target.tenant_id, target.node_id)


def _describe(target: ConfigTarget) -> str:
    where = {
        Scope.PLATFORM: "",
        Scope.TENANT: f" for tenant {target.tenant_id}",
        Scope.NODE: f" for node {target.node_id}",
    }[target.scope]
    return f"config {target.key} at {target.scope.value} scope{where}"


async def get(db: Database, target: ConfigTarget) -> ConfigRow:
    row = await db.one(ConfigRow, _GET, _target_params(target))
    if row is None:
        raise NotFound(f"{_describe(target)} is not set")
    return row


async def list_rows(
    db: Database,
    *,
    scope: Scope | None,
    tenant_id: str | None,
    node_id: str | None,
    show_archived: bool,
    after: tuple[str, str, str, str] | None,
    limit: int,
) -> list[ConfigRow]:
    """Rows ordered by (key, scope, tenant_id, node_id); ``after`` is the keyset position.

    NULL tenant/node ids sort as '' so the keyset comparison is total.
    """
    key, scope_, tenant, node = after if after is not None else (None, None, None, None)
    params = {
        "scope": scope.value if scope is not None else None,
        "tenant_id": tenant_id,
        "node_id": node_id,
        "show_archived": show_archived,
        "after_key": key,
        "after_scope": scope_,
        "after_tenant": tenant,
        "after_node": node,
        "limit": limit,
    }
    return await db.all(ConfigRow, _LIST, params)


async def _lock_row(conn: psycopg.AsyncConnection, target: ConfigTarget) -> ConfigRow | None:
    return await fetch_one(conn, ConfigRow, _LOCK, _target_params(target))


async def _record(
    conn: psycopg.AsyncConnection,
    row: ConfigRow,
    action: str,
    old_value: str | None,
    actor: str | None,
) -> ConfigChanged:
    """History entry and outbox event for a change, in the caller's transaction."""
    await conn.execute(
        _INSERT_HISTORY,
        (
            new_ulid(),
            row.key,
            row.scope,
            row.tenant_id,
            row.node_id,
            action,
            old_value,
            row.value,
            actor,
            row.updated_at,
        ),
    )
    event = row.event()
    await outbox.append(conn, event, actor=actor)
    return event


async def set_value(
    db: Database,
    target: ConfigTarget,
    value: ConfigValue,
    description: str,
    expected_version: int | None,
    actor: str | None,
) -> ConfigChanged:
    """Creates or updates a row, with its history entry and outbox event, atomically.

    Returns the row's new state (its event; the unchanged state when nothing changed).
    """
    stored = config_keys.serialize(value)

    async def work(conn: psycopg.AsyncConnection) -> ConfigChanged:
        current = await _lock_row(conn, target)
        if current is None:
            if expected_version is not None:
                raise Aborted(f"{_describe(target)} does not exist (etag mismatch)")
            created = await fetch_one(
                conn, ConfigRow, _INSERT, (*_target_params(target), stored, description or None)
            )
            if created is None:
                # A concurrent writer created it first; the replay sees and locks that row.
                raise psycopg.errors.SerializationFailure("concurrent create")
            return await _record(conn, created, "SET", None, actor)
        check_etag(expected_version, current.version, _describe(target))
        if current.is_archived:
            raise FailedPrecondition(f"{_describe(target)} is archived; unarchive it first")
        if current.value == stored and (current.description or "") == description:
            return current.event()  # nothing changes: no version bump, no history, no event
        updated = await fetch_one(
            conn, ConfigRow, _UPDATE_VALUE, (stored, description or None, *_target_params(target))
        )
        assert updated is not None
        return await _record(conn, updated, "SET", current.value, actor)

    return await db.transaction(work)


async def set_archived(
    db: Database,
    target: ConfigTarget,
    archived: bool,
    expected_version: int | None,
    actor: str | None,
) -> ConfigChanged:
    async def work(conn: psycopg.AsyncConnection) -> ConfigChanged:
        return await _set_archived_in(conn, target, archived, expected_version, actor)

    return await db.transaction(work)


async def _set_archived_in(
    conn: psycopg.AsyncConnection,
    target: ConfigTarget,
    archived: bool,
    expected_version: int | None,
    actor: str | None,
) -> ConfigChanged:
    """ArchiveConfig / UnarchiveConfig in the caller's transaction (version, history, outbox)."""
    current = await _lock_row(conn, target)
    if current is None:
        raise NotFound(f"{_describe(target)} is not set")
    check_etag(expected_version, current.version, _describe(target))
    if current.is_archived == archived:
        return current.event()
    updated = await fetch_one(
        conn, ConfigRow, _UPDATE_ARCHIVED, (archived, *_target_params(target))
    )
    assert updated is not None
    return await _record(
        conn, updated, "ARCHIVE" if archived else "UNARCHIVE", current.value, actor
    )


_LIVE_OF_TENANT = """
SELECT key FROM platform_configs
 WHERE scope = 'TENANT' AND tenant_id = %s AND NOT is_archived
 ORDER BY key
"""


async def archive_tenant(
    conn: psycopg.AsyncConnection, tenant_id: str, actor: str | None
) -> list[ConfigChanged]:
    """Archives every live TENANT-scope row of ``tenant_id`` in the caller's transaction.

    Each row goes through ArchiveConfig's own write (version + 1, an ARCHIVE history entry,
    one outbox row); returns the rows archived, in key order.
    """
    cur = await conn.execute(_LIVE_OF_TENANT, (tenant_id,))
    keys = [r[0] for r in await cur.fetchall()]
    archived = []
    for key in keys:
        target = ConfigTarget(key=key, scope=Scope.TENANT, tenant_id=tenant_id, node_id=None)
        archived.append(await _set_archived_in(conn, target, True, None, actor))
    return archived


async def live_values_for(
    db: Database, keys: list[str], tenant_id: str | None, node_id: str | None
) -> dict[str, dict[Scope, ConfigValue]]:
    """Per key, the live values that apply to this tenant/node, by scope (one query)."""
    rows = await db.all(ConfigRow, _LIVE_FOR, (keys, tenant_id, node_id))
    found: dict[str, dict[Scope, ConfigValue]] = {}
    for row in rows:
        found.setdefault(row.key, {})[Scope(row.scope)] = row.typed_value
    return found


async def history(
    db: Database, target: ConfigTarget, after: tuple[str, str] | None, limit: int
) -> list[HistoryRow]:
    """Entries newest first; ``after`` is the (changed_at ISO, id) of the last one seen."""
    after_time, after_id = after if after is not None else (None, None)
    params = {
        "key": target.key,
        "scope": target.scope.value,
        "tenant_id": target.tenant_id,
        "node_id": target.node_id,
        "after_time": after_time,
        "after_id": after_id,
        "limit": limit,
    }
    return await db.all(HistoryRow, _HISTORY, params)


# config_history is kept for 7 years (SPEC 3.6); pruned by `platform-admin prune`.
HISTORY_RETENTION = timedelta(days=7 * 365 + 2)
HISTORY_PRUNE_LOCK = 0x5041_4348_4953_0001
_PRUNE_HISTORY = retention.oldest_first("config_history", "changed_at")


# Deletes history entries older than 7 years in batches (``older_than``, ``batch`` to change).
prune_history = retention.Retention(
    HISTORY_PRUNE_LOCK, _PRUNE_HISTORY, HISTORY_RETENTION, 5000
).prune
