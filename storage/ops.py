"""Operational read-outs of the outbox, for metrics: backlog sizes and sequencer lag.

Each figure is answered from a partial index (``ix_outbox_unsequenced``,
``ix_outbox_unpublished``), so a scrape stays cheap however large the outbox grows.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True)
class OutboxBacklog:
    # Committed rows the sequencer has not given a seq yet (invisible to subscribers).
    unsequenced: int
    # Rows no relay has marked published yet.
    unpublished: int
    # Age of the oldest committed row still without a seq; 0 when the sequencer is caught up.
    # created_at is taken at insert, so a long transaction counts its own duration too.
    sequencer_lag_s: float


async def outbox_backlog(db: Database) -> OutboxBacklog:
    row = await db.one(
        OutboxBacklog,
        "SELECT"
        " (SELECT count(*) FROM outbox WHERE seq IS NULL) AS unsequenced,"
        " (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished,"
        " COALESCE(EXTRACT(EPOCH FROM clock_timestamp()"
        "   - (SELECT min(created_at) FROM outbox WHERE seq IS NULL)), 0)::float8"
        "   AS sequencer_lag_s",
    )
    assert row is not None
    return row
