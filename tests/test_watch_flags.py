"""WatchFlags against a real server: snapshot, deltas, delayed commits, resume, cursors."""

from __future__ import annotations

import asyncio

import grpc
import psycopg

from server.app import App
from server.settings import Settings
from tests.watch_helpers import (
    channel_to,
    change_flag,
    commit_flag,
    connect,
    error_reason,
    replica,
    watch,
)


async def test_snapshot_then_changes_in_commit_order(
    app: App, channel: grpc.aio.Channel, db_url: str
) -> None:
    await commit_flag(db_url, "alpha")
    await commit_flag(db_url, "beta")
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    assert w.snapshot() == {"alpha": 1, "beta": 1}
    end = next(m for m in w.messages if m.kind == "snapshot_end")
    assert end.cursor
    await commit_flag(db_url, "alpha", "second")
    await commit_flag(db_url, "gamma")
    await w.until(lambda w: len(w.changes()) >= 2)
    assert w.changes() == [("alpha", 2), ("gamma", 1)]
    cursors = [m.cursor for m in w.messages if m.kind == "flag_changed"]
    assert all(cursors) and len(set(cursors)) == 2
    await w.stop()
