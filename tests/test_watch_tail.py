"""The per-process tail: sequencing after commit, listeners in seq order, wait_for."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psycopg

from server.app import pool_settings
from server.settings import Settings
from server.tail import Sequencer, Tail
from storage import outbox, stream
from storage.db import Database
from storage.stream import ChangeEvent


async def _append(db: Database, key: str, version: int) -> None:
    async def work(conn: psycopg.AsyncConnection) -> None:
        await outbox.append(conn, outbox.FLAG_CHANGED, {"key": key, "version": version})

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
        assert [e.payload["key"] for e in seen] == [f"f{i}" for i in range(5)]
        assert [e.seq for e in seen] == sorted(e.seq for e in seen)
        assert all(e.subject == outbox.FLAG_CHANGED and e.tenant_id is None for e in seen)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
