"""The per-process tail: sequencing after commit, listeners in seq order, wait_for."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg

from domain import events
from domain.events import ChangeEvent, FlagChanged
from server.app import pool_settings
from server.changes.tail import Sequencer, Tail
from server.settings import Settings
from storage import outbox, stream
from storage.db import Database


async def _append(db: Database, key: str, version: int) -> None:
    at = datetime.now(UTC)
    flag = FlagChanged(key, "", False, (), (), False, version, at, at)

    async def work(conn: psycopg.AsyncConnection) -> None:
        await outbox.append(conn, flag)

    await db.transaction(work)


async def test_listeners_get_every_committed_event_in_seq_order(
    db_url: str, settings: Settings
) -> None:
    ps = pool_settings(replace(settings), db_url)
    db = Database(ps)
    await db.open()
    tail = Tail(db, ps, poll_interval_s=0.05)
    sequencer = Sequencer(db)
    seen: list[ChangeEvent] = []
    tail.add_listener(seen.extend)
    tasks = [asyncio.create_task(tail.run()), asyncio.create_task(sequencer.run())]
    try:
        await asyncio.wait_for(tail.ready.wait(), 10)
        start = tail.head_seq
        for i in range(5):
            await _append(db, f"f{i}", 1)
        top = await stream.head(db)
        deadline = asyncio.get_running_loop().time() + 10
        while top < start + 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            top = await stream.head(db)
        await tail.wait_for(top, timeout=10)
        assert [e.change.identity for e in seen] == [f"f{i}" for i in range(5)]
        assert [e.seq for e in seen] == sorted(e.seq for e in seen)
        assert all(e.subject == events.FLAG_CHANGED and e.tenant_id is None for e in seen)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()


async def test_tail_whose_position_was_pruned_restarts_at_head_and_says_so(
    db_url: str, settings: Settings
) -> None:
    ps = pool_settings(replace(settings), db_url)
    db = Database(ps)
    await db.open()
    tail = Tail(db, ps, poll_interval_s=30)  # reads only when woken
    seen: list[ChangeEvent] = []
    gaps: list[int] = []
    tail.add_listener(seen.extend)
    tail.add_gap_listener(lambda: gaps.append(tail.head_seq))
    task = asyncio.create_task(tail.run())
    try:
        await asyncio.wait_for(tail.ready.wait(), 10)
        for i in range(3):
            await _append(db, f"lost{i}", 1)
        top = await stream.sequence_batch(db, notify=False)
        assert top > 0
        assert await stream.prune(db, older_than=timedelta(0)) == 3
        tail.wake()
        await tail.wait_for(top, timeout=10)
        assert seen == [] and gaps == [top]
        # It carries on from the head.
        await _append(db, "after", 1)
        later = await stream.sequence_batch(db, notify=False)
        tail.wake()
        await tail.wait_for(later, timeout=10)
        assert [e.change.identity for e in seen] == ["after"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
