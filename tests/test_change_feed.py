"""The change feed's subscription protocol, against a real database and a real tail.

Each consumer of the stream relies on these: every event after the position once and in
seq order (backlog from the database, then live), an overflowing queue that falls back to
the database without losing or repeating anything, and explicit ends when events are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from domain import events
from domain.config_keys import Scope
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from server.app import cancel_all, pool_settings
from server.changes.feed import (
    NOW,
    SNAPSHOT,
    ChangeFeed,
    Expired,
    Idle,
    Item,
    Lagging,
    Live,
    Subscription,
)
from server.changes.tail import Tail
from server.settings import Settings
from storage import outbox, stream
from storage.db import Database
from storage.stream import CursorExpired, Snapshot

T1 = "01JA0000000000000000000AAA"
T2 = "01JA0000000000000000000BBB"


@dataclass
class Harness:
    db: Database
    tail: Tail
    feed: ChangeFeed

    async def write(self, *changes: events.Change, actor: str | None = None) -> int:
        """Commits ``changes`` in one transaction, sequences them; returns the top seq."""

        async def work(conn: psycopg.AsyncConnection) -> None:
            for change in changes:
                await outbox.append(conn, change, actor=actor)

        await self.db.transaction(work)
        top = await stream.sequence_batch(self.db, notify=False)
        self.tail.wake()
        return top


@pytest.fixture
async def harness(db_url: str, settings: Settings) -> AsyncIterator[Harness]:
    ps = pool_settings(replace(settings), db_url)
    db = Database(ps)
    await db.open()
    tail = Tail(db, ps, poll_interval_s=30)  # reads when woken, so tests decide when
    feed = ChangeFeed(db, tail)
    task = asyncio.create_task(tail.run())
    await asyncio.wait_for(tail.ready.wait(), 10)
    try:
        yield Harness(db, tail, feed)
    finally:
        await cancel_all([task])  # re-cancels: a single cancel can be lost (server/app.py)
        await db.close()


def flag(key: str, version: int = 1) -> FlagChanged:
    at = datetime.now(UTC)
    return FlagChanged(key, "", False, (), (), False, version, at, at)


def config(key: str, tenant: str) -> ConfigChanged:
    return ConfigChanged(key, Scope.TENANT, tenant, None, 3, "", False, 1, datetime.now(UTC))


async def take(sub: Subscription, n: int, timeout: float = 10) -> list[Item]:
    """The next ``n`` items of ``sub``."""
    got: list[Item] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await anext(sub))
    return got


def changed(items: list[Item]) -> list[str]:
    return [str(i.change.identity) for i in items if isinstance(i, ChangeEvent)]


class Reader:
    """Iterates a subscription in the background, recording every item."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.items: list[Item] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for item in self.sub:
            self.items.append(item)
            self.arrived.set()

    async def until(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len([i for i in self.items if isinstance(i, ChangeEvent)]) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def stop(self) -> None:
        self.sub.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


async def test_backlog_then_live_events_arrive_once_in_seq_order_with_their_row(
    harness: Harness,
) -> None:
    start = harness.tail.head_seq
    await harness.write(flag("a"), flag("b"), actor="01JA00000000000000000000U1")
    reader = Reader(harness.feed.subscribe(start, subjects=[events.FLAG_CHANGED]))
    await reader.until(2)
    await harness.write(flag("c"), config("global.password_min_length", T1), flag("d"))
    await reader.until(4)
    await harness.write(flag("e"))
    await reader.until(5)
    await reader.stop()
    got = [i for i in reader.items if isinstance(i, ChangeEvent)]
    assert [str(e.change.identity) for e in got] == ["a", "b", "c", "d", "e"]
    assert [e.seq for e in got] == sorted({e.seq for e in got})
    assert got[0].changed_by == "01JA00000000000000000000U1" and got[2].changed_by == ""
    assert all(e.subject == events.FLAG_CHANGED and len(e.id) == 26 for e in got)
    assert any(isinstance(i, Live) for i in reader.items)


async def test_subjects_and_accept_narrow_what_is_delivered(harness: Harness) -> None:
    start = harness.tail.head_seq
    key = "global.password_min_length"
    only_t1 = harness.feed.subscribe(
        start,
        subjects=[events.CONFIG_CHANGED],
        accept=lambda e: e.tenant_id == T1,
    )
    reader = Reader(only_t1)
    await harness.write(flag("x"), config(key, T2), config(key, T1))
    await reader.until(1)
    await harness.write(config(key, T2), config("email.smtp_port", T1))
    await reader.until(2)
    await reader.stop()
    got = [i for i in reader.items if isinstance(i, ChangeEvent)]
    assert [(e.tenant_id, e.change.identity[0]) for e in got] == [
        (T1, key),
        (T1, "email.smtp_port"),
    ]


async def test_an_overflowing_queue_falls_back_to_the_database_without_loss(
    harness: Harness,
) -> None:
    start = harness.tail.head_seq
    lagged: list[int] = []
    sub = harness.feed.subscribe(
        start, queue_limit=3, on_lagging=lambda s: lagged.append(s.dropped)
    )
    first = await take(sub, 1)  # attached and following: nothing yet, so it is Live
    assert isinstance(first[0], Live)
    # A burst larger than the queue, delivered while the consumer does not read.
    await harness.write(*[flag(f"burst{i}") for i in range(20)])
    await harness.tail.wait_for(await stream.head(harness.db), timeout=10)
    assert lagged == [20]
    items = await take(sub, 22)
    assert isinstance(items[0], Lagging) and items[0].dropped == 20
    assert changed(items) == [f"burst{i}" for i in range(20)]
    assert isinstance(items[-1], Live)  # caught up again and following
    await harness.write(flag("after"))
    assert changed(await take(sub, 1)) == ["after"]
    sub.close()


async def test_events_lost_to_the_tail_expire_following_subscriptions(harness: Harness) -> None:
    sub = harness.feed.subscribe(NOW)
    assert isinstance((await take(sub, 1))[0], Live)
    await harness.tail._skip_to_head()  # what the tail does when its position was pruned
    (item,) = await take(sub, 1)
    assert isinstance(item, Expired) and item.error.reason == "STREAM_RESTARTED"
    with pytest.raises(StopAsyncIteration):
        await take(sub, 1)


async def test_a_position_removed_by_retention_expires_at_once(harness: Harness) -> None:
    start = harness.tail.head_seq
    await harness.write(flag("old1"), flag("old2"))
    assert await stream.prune(harness.db, older_than=timedelta(0)) == 2
    (item,) = await take(harness.feed.subscribe(start), 1)
    assert isinstance(item, Expired) and isinstance(item.error, CursorExpired)
    assert item.position == start


async def test_now_starts_at_the_head_and_idle_says_how_far_it_got(harness: Harness) -> None:
    await harness.write(flag("before"))
    await harness.tail.wait_for(await stream.head(harness.db), timeout=10)
    sub = harness.feed.subscribe(NOW, idle_s=0.05)
    live, idle = await take(sub, 2)
    assert isinstance(live, Live) and isinstance(idle, Idle)
    assert idle.position == harness.tail.head_seq
    top = await harness.write(flag("later"))
    items = await take(sub, 1)
    while not isinstance(items[-1], ChangeEvent):
        items += await take(sub, 1)
    assert changed(items) == ["later"] and sub.position == top
    sub.close()


async def test_idle_comes_only_after_idle_s_without_an_event(harness: Harness) -> None:
    """Events closer together than idle_s never let an Idle through (each one moves the
    due time later); the Idle comes idle_s after the last of them."""
    await harness.tail.wait_for(await stream.head(harness.db), timeout=10)
    sub = harness.feed.subscribe(NOW, idle_s=0.4)
    (live,) = await take(sub, 1)
    assert isinstance(live, Live)
    items: list[Item] = []
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async for item in sub:
            items.append(item)
            if isinstance(item, Idle):
                return

    reader = asyncio.create_task(read())
    for i in range(6):  # 0.15 s apart: 0.9 s in all, more than twice idle_s
        await harness.write(flag(f"k{i}"))
        await asyncio.sleep(0.15)
    last_write = loop.time()
    await asyncio.wait_for(reader, 5)
    idle_at = loop.time()
    assert changed(items) == [f"k{i}" for i in range(6)]
    assert isinstance(items[-1], Idle) and sum(isinstance(i, Idle) for i in items) == 1
    assert idle_at - last_write >= 0.4 - 0.15 - 0.05
    sub.close()


async def test_snapshot_comes_first_and_the_events_after_it_follow(harness: Harness) -> None:
    await harness.write(flag("in-snapshot"))

    async def load() -> Snapshot[FlagChanged]:
        return await stream.flag_snapshot(harness.db, None)

    sub = harness.feed.subscribe(SNAPSHOT, subjects=[events.FLAG_CHANGED], snapshot=load)
    (snap,) = await take(sub, 1)
    assert isinstance(snap, Snapshot) and snap.head_seq == await stream.head(harness.db)
    await harness.write(flag("after-snapshot"))
    items = await take(sub, 2)
    # Written while nobody iterated: read from the database, then the subscription goes live.
    assert changed(items) == ["after-snapshot"] and isinstance(items[1], Live)
    sub.close()
    with pytest.raises(ValueError, match="snapshot loader"):
        harness.feed.subscribe(SNAPSHOT)
