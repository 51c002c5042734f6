"""The read model's initial load: every flag and config, and the head seq, in one snapshot.

One REPEATABLE READ transaction reads the head and both tables, so every change with
``seq <= head`` is already reflected in the rows (a seq is assigned after its change
committed); the change stream from ``head`` on brings the rest.

Only the columns the hot path needs are read, as plain tuples, and tenant ids are shared
between rows (a few hundred tenants appear in thousands of lists): with 10,000 flags this
keeps the load well under a second and the model to a few tens of MB.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import config_keys
from domain.read_state import ConfigState, FlagState, tenant_set
from storage import stream
from storage.db import Database

_FLAGS = """
SELECT key, default_enabled, enabled_tenant_ids, disabled_tenant_ids, is_archived, version
  FROM feature_flags
"""
_CONFIGS = """
SELECT key, scope, tenant_id, node_id, value, is_archived, version
  FROM platform_configs
"""


_BATCH = 1000


@dataclass(frozen=True)
class Loaded:
    head_seq: int
    flags: list[FlagState]
    configs: list[ConfigState]


async def load_all(db: Database) -> Loaded:
    async with db.read() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head_seq = await stream.head_in(conn)
        shared: dict[str, str] = {}
        same = shared.setdefault
        flags: list[FlagState] = []
        cur = await conn.execute(_FLAGS)
        # In batches: only one batch of raw rows is alive next to the states built so far.
        while batch := await cur.fetchmany(_BATCH):
            flags.extend(
                FlagState(
                    key,
                    default_enabled,
                    tenant_set([same(t, t) for t in enabled]),
                    tenant_set([same(t, t) for t in disabled]),
                    archived,
                    version,
                )
                for key, default_enabled, enabled, disabled, archived, version in batch
            )
        cur = await conn.execute(_CONFIGS)
        config_rows = await cur.fetchall()
    configs = [
        ConfigState(
            key,
            config_keys.Scope(scope),
            tenant_id,
            node_id,
            config_keys.deserialize(value),
            archived,
            version,
        )
        for key, scope, tenant_id, node_id, value, archived, version in config_rows
    ]
    return Loaded(head_seq, flags, configs)
