"""WatchFlags against a real server: snapshot, deltas, delayed commits, resume, cursors."""

from __future__ import annotations

import asyncio
import base64

import grpc
import psycopg

from domain import cursor
from server.app import App
from server.settings import Settings
from storage import stream
from tests.watch_helpers import (
    change_flag,
    channel_to,
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


async def test_delayed_commit_is_delivered_when_it_commits(
    app: App, channel: grpc.aio.Channel, db_url: str, sql: psycopg.Connection
) -> None:
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    t1 = await psycopg.AsyncConnection.connect(db_url, options="-c search_path=platform_admin")
    try:
        await change_flag(t1, "flag-a")  # T1 stays open
        await commit_flag(db_url, "flag-b")  # T2 commits
        await w.until(lambda w: ("flag-b", 1) in w.changes())
        await asyncio.sleep(0.3)  # a few sequencer rounds and a poll: A must not appear
        assert w.changes() == [("flag-b", 1)]
        await t1.commit()
    finally:
        await t1.close()
    await w.until(lambda w: len(w.changes()) >= 2)
    assert w.changes() == [("flag-b", 1), ("flag-a", 1)]
    # A was inserted first but committed last: it is sequenced after B.
    seqs = dict(sql.execute("SELECT payload->>'key', seq FROM outbox").fetchall())
    assert seqs["flag-a"] > seqs["flag-b"]
    await w.stop()


async def test_resume_on_other_replica_gets_exactly_the_changes_after_the_cursor(
    app: App, channel: grpc.aio.Channel, db_url: str, settings: Settings
) -> None:
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    for i in range(3):
        await commit_flag(db_url, f"k{i}")
    await w.until(lambda w: len(w.changes()) >= 3)
    # Disconnect after the second change: its cursor is k.
    second = [m for m in w.messages if m.kind == "flag_changed"][1]
    await w.stop()
    for i in range(3, 6):
        await commit_flag(db_url, f"k{i}")
    await commit_flag(db_url, "k0", "again")
    async with replica(db_url, settings) as other, channel_to(other) as ch:
        resumed = watch(ch, cursor=second.cursor)
        await resumed.until(lambda w: len(w.changes()) >= 5)
        await asyncio.sleep(0.3)
        assert [m.kind for m in resumed.messages] == ["flag_changed"] * 5
        assert resumed.changes() == [("k2", 1), ("k3", 1), ("k4", 1), ("k5", 1), ("k0", 2)]
        await resumed.stop()


async def test_keys_filter_and_heartbeat_with_head_cursor(db_url: str, settings: Settings) -> None:
    async with replica(db_url, settings, watch_heartbeat_s=0.3) as server, channel_to(server) as ch:
        await commit_flag(db_url, "watched")
        await commit_flag(db_url, "other")
        w = watch(ch, keys=["watched"])
        await w.until(lambda w: w.snapshot_done())
        assert w.snapshot() == {"watched": 1}
        await commit_flag(db_url, "other", "unrelated change")
        top = await _head(db_url)
        # An idle stream gets heartbeats whose cursor moves past the filtered-out change.
        await w.until(
            lambda w: any(
                m.kind == "heartbeat" and cursor.decode(m.cursor).seq >= top for m in w.messages
            ),
            timeout=5,
        )
        assert w.changes() == []
        beat = next(m for m in reversed(w.messages) if m.kind == "heartbeat")
        await w.stop()
        resumed = watch(ch, cursor=beat.cursor, keys=["watched"])
        await commit_flag(db_url, "watched", "now")
        await resumed.until(lambda w: len(w.changes()) >= 1)
        assert resumed.changes() == [("watched", 2)]
        await resumed.stop()


async def _head(db_url: str) -> int:
    async with await connect(db_url) as conn:
        for _ in range(200):
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE seq IS NULL), COALESCE(max(seq), 0) FROM outbox"
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0] == 0:
                return int(row[1])
            await asyncio.sleep(0.02)
    raise AssertionError("outbox rows were not sequenced")


async def _watch_error(ch: grpc.aio.Channel, cursor_text: str) -> grpc.aio.AioRpcError:
    w = watch(ch, cursor=cursor_text)
    assert w.task is not None
    await asyncio.wait_for(w.task, 10)
    assert w.error is not None, f"stream did not fail: {w.summary()}"
    assert w.messages == []
    return w.error


async def test_forged_cursor_is_invalid_argument(
    app: App, channel: grpc.aio.Channel, db_url: str
) -> None:
    await commit_flag(db_url, "alpha")
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    genuine = w.last_cursor()
    await w.stop()
    raw = bytearray(base64.urlsafe_b64decode(genuine + "=" * (-len(genuine) % 4)))
    raw[12] ^= 0x01  # another seq, same database tag: the MAC no longer matches
    edited = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    for bad in ["nonsense", "x" * 500, edited, genuine[:-2]]:
        error = await _watch_error(channel, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "cursor" in (error.details() or "")


async def test_expired_foreign_and_future_cursors_are_out_of_range(
    app: App,
    channel: grpc.aio.Channel,
    db_url: str,
    sql: psycopg.Connection,
    settings: Settings,
) -> None:
    await commit_flag(db_url, "alpha")
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    old = w.last_cursor()
    await w.stop()
    await commit_flag(db_url, "alpha", "later")
    await commit_flag(db_url, "beta")
    top = await _head(db_url)
    database_id = sql.execute("SELECT database_id FROM stream_state").fetchone()[0]

    # Ahead of the head (e.g. the database was restored from an older backup).
    error = await _watch_error(channel, cursor.encode(database_id, top + 10))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(error) == "CURSOR_EXPIRED"

    # Older than retention: the rows after the cursor are pruned.
    sql.execute("UPDATE outbox SET created_at = now() - interval '8 days'")
    assert await stream.prune(app.db) == 3
    assert sql.execute("SELECT pruned_seq FROM stream_state").fetchone()[0] == top
    error = await _watch_error(channel, old)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(error) == "CURSOR_EXPIRED"
    assert "retention" in (error.details() or "")
    # The head cursor is still good: nothing after it was removed. So on a replica started
    # after the outbox was emptied: the head is the watermark, not 0.
    async with replica(db_url, settings) as later, channel_to(later) as later_channel:
        snap = watch(later_channel)
        await snap.until(lambda w: w.snapshot_done())
        assert cursor.decode(snap.last_cursor()).seq == top
        fresh = watch(later_channel, cursor=cursor.encode(database_id, top))
        await commit_flag(db_url, "gamma")
        await fresh.until(lambda w: w.changes() == [("gamma", 1)])
        await snap.until(lambda w: w.changes() == [("gamma", 1)])
        await fresh.stop()
        await snap.stop()

    # Another database (restored elsewhere or replaced): its identity differs.
    sql.execute("UPDATE stream_state SET database_id = gen_random_uuid()")
    error = await _watch_error(channel, cursor.encode(database_id, top))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(error) == "CURSOR_EXPIRED"
    assert "another database" in (error.details() or "")


async def test_resuming_from_a_snapshot_never_repeats_a_version_it_contained(app, channel, db_url):
    """A change committed but not yet sequenced when the snapshot is read is in the snapshot;
    resuming from the snapshot's cursor must not deliver that version again."""
    lock = await connect(db_url)
    try:
        # Hold the sequencer back so the change is still unsequenced when the snapshot runs.
        await lock.execute("BEGIN")
        await lock.execute("SELECT pg_advisory_xact_lock(%s)", (stream.SEQUENCER_LOCK,))
        version = await commit_flag(db_url, "snap.pending")
        first = watch(channel)
        await asyncio.sleep(0.05)
        await lock.execute("COMMIT")
        await first.until(lambda w: w.snapshot_done())
        assert first.snapshot()["snap.pending"] == version
        cursor_after_snapshot = first.last_cursor()
        await first.stop()
    finally:
        await lock.close()
    later = await commit_flag(db_url, "snap.later")
    resumed = watch(channel, cursor=cursor_after_snapshot)
    await resumed.until(lambda w: ("snap.later", later) in w.changes())
    assert ("snap.pending", version) not in resumed.changes()
    await resumed.stop()
