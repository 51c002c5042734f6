"""Queries over platform_configs and config_history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from domain import config_keys
from domain.config_keys import ConfigTarget, ConfigValue, Scope
from domain.errors import Aborted, FailedPrecondition, NotFound
from domain.etags import check_etag
from domain.ids import new_ulid
from storage import outbox
from storage.db import Database

_COLUMNS = "key, scope, tenant_id, node_id, value, description, is_archived, version, updated_at"


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

    def event_payload(self) -> dict[str, Any]:
        """The full state carried by the outbox row of a change to this row."""
        return {
            "key": self.key,
            "scope": self.scope,
            "tenant_id": self.tenant_id,
            "node_id": self.node_id,
            "value": self.typed_value,
            "description": self.description or "",
            "archived": self.is_archived,
            "version": self.version,
            "update_time": self.updated_at.isoformat(),
        }


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


_WHERE_TARGET = (
    "key = %s AND scope = %s AND tenant_id IS NOT DISTINCT FROM %s"
    " AND node_id IS NOT DISTINCT FROM %s"
)


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
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(ConfigRow))
        await cur.execute(
            f"SELECT {_COLUMNS} FROM platform_configs WHERE {_WHERE_TARGET}",
            _target_params(target),
        )
        row = await cur.fetchone()
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
    clauses = ["TRUE"]
    params: list[Any] = []
    if scope is not None:
        clauses.append("scope = %s")
        params.append(scope.value)
    if tenant_id is not None:
        clauses.append("tenant_id = %s")
        params.append(tenant_id)
    if node_id is not None:
        clauses.append("node_id = %s")
        params.append(node_id)
    if not show_archived:
        clauses.append("NOT is_archived")
    if after is not None:
        clauses.append(
            "(key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, '')) > (%s, %s, %s, %s)"
        )
        params.extend(after)
    params.append(limit)
    query = (
        f"SELECT {_COLUMNS} FROM platform_configs WHERE {' AND '.join(clauses)}"
        " ORDER BY key, scope, COALESCE(tenant_id, ''), COALESCE(node_id, '') LIMIT %s"
    )
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(ConfigRow))
        await cur.execute(query.encode(), params)
        return await cur.fetchall()


async def _lock_row(conn: psycopg.AsyncConnection, target: ConfigTarget) -> ConfigRow | None:
    cur = conn.cursor(row_factory=class_row(ConfigRow))
    await cur.execute(
        f"SELECT {_COLUMNS} FROM platform_configs WHERE {_WHERE_TARGET} FOR UPDATE",
        _target_params(target),
    )
    return await cur.fetchone()


async def _record(
    conn: psycopg.AsyncConnection,
    row: ConfigRow,
    action: str,
    old_value: str | None,
    actor: str | None,
) -> None:
    """History entry and outbox event for a change, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO config_history (id, config_key, scope, tenant_id, node_id, action,"
        " old_value, new_value, changed_by, changed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s)",
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
    await outbox.append(
        conn, outbox.CONFIG_CHANGED, row.event_payload(), tenant_id=row.tenant_id, actor=actor
    )


async def set_value(
    db: Database,
    target: ConfigTarget,
    value: ConfigValue,
    description: str,
    expected_version: int | None,
    actor: str | None,
) -> ConfigRow:
    """Creates or updates a row, with its history entry and outbox event, atomically."""
    stored = config_keys.serialize(value)

    async def work(conn: psycopg.AsyncConnection) -> ConfigRow:
        current = await _lock_row(conn, target)
        if current is None:
            if expected_version is not None:
                raise Aborted(f"{_describe(target)} does not exist (etag mismatch)")
            cur = conn.cursor(row_factory=class_row(ConfigRow))
            await cur.execute(
                "INSERT INTO platform_configs (key, scope, tenant_id, node_id, value, description)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT ON CONSTRAINT uq_platform_configs_identity DO NOTHING"
                f" RETURNING {_COLUMNS}",
                (*_target_params(target), stored, description or None),
            )
            created = await cur.fetchone()
            if created is None:
                # A concurrent writer created it first; the replay sees and locks that row.
                raise psycopg.errors.SerializationFailure("concurrent create")
            await _record(conn, created, "SET", None, actor)
            return created
        check_etag(expected_version, current.version, _describe(target))
        if current.is_archived:
            raise FailedPrecondition(f"{_describe(target)} is archived; unarchive it first")
        if current.value == stored and (current.description or "") == description:
            return current  # nothing changes: no version bump, no history, no event
        cur = conn.cursor(row_factory=class_row(ConfigRow))
        await cur.execute(
            "UPDATE platform_configs SET value = %s, description = %s, version = version + 1,"
            f" updated_at = now() WHERE {_WHERE_TARGET} RETURNING {_COLUMNS}",
            (stored, description or None, *_target_params(target)),
        )
        updated = await cur.fetchone()
        assert updated is not None
        await _record(conn, updated, "SET", current.value, actor)
        return updated

    return await db.transaction(work)


async def set_archived(
    db: Database,
    target: ConfigTarget,
    archived: bool,
    expected_version: int | None,
    actor: str | None,
) -> ConfigRow:
    async def work(conn: psycopg.AsyncConnection) -> ConfigRow:
        current = await _lock_row(conn, target)
        if current is None:
            raise NotFound(f"{_describe(target)} is not set")
        check_etag(expected_version, current.version, _describe(target))
        if current.is_archived == archived:
            return current
        cur = conn.cursor(row_factory=class_row(ConfigRow))
        await cur.execute(
            "UPDATE platform_configs SET is_archived = %s, version = version + 1,"
            f" updated_at = now() WHERE {_WHERE_TARGET} RETURNING {_COLUMNS}",
            (archived, *_target_params(target)),
        )
        updated = await cur.fetchone()
        assert updated is not None
        await _record(conn, updated, "ARCHIVE" if archived else "UNARCHIVE", current.value, actor)
        return updated

    return await db.transaction(work)


async def live_values_for(
    db: Database, keys: list[str], tenant_id: str | None, node_id: str | None
) -> dict[str, dict[Scope, ConfigValue]]:
    """Per key, the live values that apply to this tenant/node, by scope (one query)."""
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(ConfigRow))
        await cur.execute(
            f"SELECT {_COLUMNS} FROM platform_configs"
            " WHERE key = ANY(%s) AND NOT is_archived AND ("
            " scope = 'PLATFORM'"
            " OR (scope = 'TENANT' AND tenant_id = %s)"
            " OR (scope = 'NODE' AND node_id = %s))",
            (keys, tenant_id, node_id),
        )
        rows = await cur.fetchall()
    found: dict[str, dict[Scope, ConfigValue]] = {}
    for row in rows:
        found.setdefault(row.key, {})[Scope(row.scope)] = row.typed_value
    return found


async def history(
    db: Database, target: ConfigTarget, after: tuple[str, str] | None, limit: int
) -> list[HistoryRow]:
    """Entries newest first; ``after`` is the (changed_at ISO, id) of the last one seen."""
    params: list[Any] = list(_target_params(target))
    keyset = ""
    if after is not None:
        keyset = " AND (changed_at, id) < (%s::timestamptz, %s)"
        params.extend(after)
    params.append(limit)
    async with db.read() as conn:
        cur = conn.cursor(row_factory=class_row(HistoryRow))
        await cur.execute(
            (
                "SELECT id, config_key, scope, tenant_id, node_id, action, old_value, new_value,"
                " changed_by, changed_at FROM config_history WHERE config_key = %s AND scope = %s"
                " AND tenant_id IS NOT DISTINCT FROM %s AND node_id IS NOT DISTINCT FROM %s"
                f"{keyset} ORDER BY changed_at DESC, id DESC LIMIT %s"
            ).encode(),
            params,
        )
        return await cur.fetchall()
