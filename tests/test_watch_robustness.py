"""Watch streams under faults: lost LISTEN connection, slow and cancelled clients,
long transactions, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import psycopg
from platform_admin.v1 import flag_pb2, flag_pb2_grpc
from psycopg.conninfo import make_conninfo

from server.app import App
from server.changes.tail import POLL_INTERVAL_S
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.watch_helpers import (
    change_flag,
    channel_to,
    commit_flag,
    connect,
    error_reason,
    replica,
    watch,
)


async def _timed_writes(
    db_url: str, keys: list[str], interval: float
) -> dict[tuple[str, int], float]:
    """Commits one change per key, ``interval`` apart; returns commit times."""
    committed: dict[tuple[str, int], float] = {}
    async with await connect(db_url) as conn:
        for key in keys:
            async with conn.transaction():
                version = await change_flag(conn, key)
            committed[(key, version)] = time.monotonic()
            await asyncio.sleep(interval)
    return committed


async def test_listen_connection_killed_during_writes_delivery_continues_within_poll(
    app: App, db_url: str, settings: Settings, sql: psycopg.Connection
) -> None:
    # This replica does not sequence: it hears of new events only by NOTIFY or its poll.
    async with replica(db_url, settings, sequencer=False) as other, channel_to(other) as ch:
        w = watch(ch)
        await w.until(lambda w: w.snapshot_done())
        await asyncio.wait_for(_until(lambda: other.tail.listen_pid is not None), 10)
        keys = [f"k{i}" for i in range(40)]
        writes = asyncio.create_task(_timed_writes(db_url, keys, 0.025))
        killed = 0
        while not writes.done():
            pid = other.tail.listen_pid
            if pid is not None:
                sql.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed += 1
            await asyncio.sleep(0.15)
        await writes
        assert killed >= 3
        await w.until(lambda w: len(w.changes()) >= len(keys))
        assert w.changes() == [(k, 1) for k in keys]
        # From the moment a row was sequenced (by the other replica) to its delivery here:
        # within the poll interval, plus scheduling slack on a shared machine.
        sequenced = {
            key: at.timestamp()
            for key, at in sql.execute(
                "SELECT payload->>'key', sequenced_at FROM outbox WHERE seq IS NOT NULL"
            )
        }
        arrived = {m.key: m.wall for m in w.messages if m.kind == "flag_changed"}
        worst = max(arrived[k] - sequenced[k] for k in keys)
        assert worst < POLL_INTERVAL_S + 0.25, worst
        assert other.tail.reconnects >= 3
        await asyncio.wait_for(_until(lambda: other.tail.listen_connected), 10)
        await w.stop()


async def test_without_any_listen_connection_the_poll_alone_delivers_within_its_bound(
    app: App, db_url: str, settings: Settings, sql: psycopg.Connection
) -> None:
    other = App(replace(settings), db_url, authorizer=AllowAll())
    other.background.remove(other.sequencer.run)
    # Nothing listens on port 1: every LISTEN attempt is refused, only the poll is left.
    other.tail.pool_settings = replace(
        other.tail.pool_settings, conninfo=make_conninfo(db_url, port="1")
    )
    await other.start()
    try:
        async with channel_to(other) as ch:
            w = watch(ch)
            await w.until(lambda w: w.snapshot_done())
            keys = [f"p{i}" for i in range(12)]
            await _timed_writes(db_url, keys, 0.07)
            await w.until(lambda w: len(w.changes()) >= len(keys))
            assert w.changes() == [(k, 1) for k in keys]
            assert not other.tail.listen_connected
            sequenced = {
                key: at.timestamp()
                for key, at in sql.execute(
                    "SELECT payload->>'key', sequenced_at FROM outbox WHERE seq IS NOT NULL"
                )
            }
            delays = [m.wall - sequenced[m.key] for m in w.messages if m.kind == "flag_changed"]
            assert max(delays) < POLL_INTERVAL_S + 0.25, delays
            await w.stop()
    finally:
        await other.stop(grace=0)


async def _until(condition: Callable[[], bool], step: float = 0.02) -> None:
    """Polls until ``condition`` holds (callers bound it with a timeout)."""
    for _ in itertools.count():
        if condition():
            return
        await asyncio.sleep(step)


async def test_client_that_stops_reading_is_cut_off_others_unaffected(
    app: App, channel: grpc.aio.Channel, db_url: str
) -> None:
    app.watch.queue_limit = 50
    fast = watch(channel)
    # The slow client: a window that does not grow, and it stops reading after the snapshot.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{app.port}", options=[("grpc.http2.bdp_probe", 0)]
    ) as slow_channel:
        slow = flag_pb2_grpc.FlagServiceStub(slow_channel).WatchFlags(flag_pb2.WatchFlagsRequest())
        first = await slow.read()
        assert first.WhichOneof("event") == "snapshot_end"
        await fast.until(lambda w: w.snapshot_done())
        assert app.watch.open_streams == 2

        big = "x" * 2000
        peak = 0
        async with await connect(db_url) as conn:
            for batch in range(10):
                async with conn.transaction():
                    for i in range(40):
                        await change_flag(conn, f"f{batch}-{i}", big)
                peak = max(peak, app.watch.buffered_events)
                await asyncio.sleep(0.05)
        await fast.until(lambda w: len(w.changes()) >= 400, 20)
        await asyncio.wait_for(_until(lambda: app.watch.open_streams == 1), 10)
        assert app.watch.cut_off == 1
        # Memory stays bounded: never more than one queue's worth per stream is buffered.
        assert peak <= 2 * app.watch.queue_limit
        assert app.watch.buffered_events <= app.watch.queue_limit

        # The other subscriber's latency is unaffected.
        started = time.monotonic()
        await commit_flag(db_url, "marker")
        await fast.until(lambda w: ("marker", 1) in w.changes(), 5)
        assert time.monotonic() - started < 1.0

        # When the slow client reads again: what was in flight, then RESOURCE_EXHAUSTED.
        received = []
        try:
            async with asyncio.timeout(10):
                while (message := await slow.read()) is not grpc.aio.EOF:
                    received.append(message)
            raise AssertionError("the slow stream was not ended")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(error) == "SUBSCRIBER_TOO_SLOW"
        assert 0 < len(received) < 400
        # It resumes by cursor and gets exactly the rest.
        resumed = watch(channel, cursor=received[-1].cursor)
        await resumed.until(lambda w: len(w.changes()) >= 401 - len(received), 20)
        keys = [m.flag_changed.key for m in received] + [k for k, _ in resumed.changes()]
        assert keys == [k for k, _ in fast.changes()]
        await resumed.stop()
    await fast.stop()


async def test_burst_larger_than_the_queue_is_read_from_the_database_without_error(
    app: App, channel: grpc.aio.Channel, db_url: str
) -> None:
    app.watch.queue_limit = 50
    readers = [watch(channel) for _ in range(3)]
    for w in readers:
        await w.until(lambda w: w.snapshot_done())
    async with await connect(db_url) as conn, conn.transaction():
        for i in range(300):  # one transaction: one tail batch, six queues' worth
            await change_flag(conn, f"bulk-{i:03d}")
    for w in readers:
        await w.until(lambda w: len(w.changes()) >= 300, 20)
    assert app.watch.fell_behind >= 1
    assert app.watch.cut_off == 0
    await commit_flag(db_url, "after-burst")
    for w in readers:
        await w.until(lambda w: len(w.changes()) >= 301, 10)
        assert w.changes() == [(f"bulk-{i:03d}", 1) for i in range(300)] + [("after-burst", 1)]
        assert w.error is None
        await w.stop()


async def test_client_cancel_unregisters_without_leaks(
    app: App, channel: grpc.aio.Channel, db_url: str, sql: psycopg.Connection
) -> None:
    sql.execute(
        "INSERT INTO feature_flags (key) SELECT 'bulk-' || g FROM generate_series(1, 3000) g"
    )
    await commit_flag(db_url, "warm")
    warm = watch(channel)
    await warm.until(lambda w: w.snapshot_done())
    await warm.stop()
    await asyncio.wait_for(_until(lambda: app.watch.open_streams == 0), 10)
    await asyncio.sleep(0.2)
    baseline = len(asyncio.all_tasks())

    # Cancelled in every phase: during the snapshot, while live and idle, with a cursor.
    during_snapshot = [watch(channel) for _ in range(5)]
    for w in during_snapshot:
        await w.until(lambda w: len(w.messages) >= 1)
    live = [watch(channel) for _ in range(5)]
    for w in live:
        await w.until(lambda w: w.snapshot_done())
    resumed = [watch(channel, cursor=live[0].last_cursor()) for _ in range(5)]
    await asyncio.wait_for(_until(lambda: app.watch.open_streams == 15), 10)
    for w in [*during_snapshot, *live, *resumed]:
        await w.stop()

    await asyncio.wait_for(_until(lambda: app.watch.open_streams == 0), 10)
    # No stream's subscription is left in the feed: only the read model's (unbounded) one.
    assert [s for s in app.changes.subscriptions() if s.queue_limit is not None] == []
    # No task outlives its stream (measured from here, without helper tasks of our own).
    for _ in range(200):
        if len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= baseline, [t.get_coro() for t in asyncio.all_tasks()]

    # The pool is whole: every connection comes back (the tail and sequencer borrow briefly).
    def whole() -> bool:
        stats = app.db.pool.get_stats()
        return stats.get("pool_available", 0) == stats.get("pool_size", -1)

    await asyncio.wait_for(_until(whole, 0.001), 10)
    # And it still serves.
    after = watch(channel, keys=["warm"])
    await after.until(lambda w: w.snapshot_done())
    assert after.snapshot() == {"warm": 1}
    await after.stop()


async def test_long_unrelated_transaction_does_not_stall_delivery(
    app: App, channel: grpc.aio.Channel, db_url: str
) -> None:
    w = watch(channel)
    await w.until(lambda w: w.snapshot_done())
    # One transaction with an uncommitted outbox row, one holding an old snapshot open.
    writer = await psycopg.AsyncConnection.connect(db_url, options="-c search_path=platform_admin")
    reader = await psycopg.AsyncConnection.connect(db_url, options="-c search_path=platform_admin")
    try:
        await change_flag(writer, "slow-writer")
        await reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await reader.execute("SELECT count(*) FROM outbox")
        latencies = []
        for i in range(10):
            started = time.monotonic()
            await commit_flag(db_url, f"quick-{i}")
            await w.until(lambda w, i=i: (f"quick-{i}", 1) in w.changes(), 5)
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies
        assert "slow-writer" not in {k for k, _ in w.changes()}
        await writer.commit()
        await w.until(lambda w: ("slow-writer", 1) in w.changes(), 5)
        assert w.changes()[-1] == ("slow-writer", 1)
    finally:
        await writer.close()
        await reader.close()
    await w.stop()


async def test_stop_ends_open_streams_with_unavailable_and_they_resume_elsewhere(
    app: App, channel: grpc.aio.Channel, db_url: str, settings: Settings
) -> None:
    await commit_flag(db_url, "alpha")
    async with replica(db_url, settings) as doomed:
        async with channel_to(doomed) as ch:
            watchers = [watch(ch) for _ in range(3)]
            for w in watchers:
                await w.until(lambda w: w.snapshot_done())
            await commit_flag(db_url, "beta")
            for w in watchers:
                await w.until(lambda w: ("beta", 1) in w.changes())
            await doomed.stop(grace=2)
            for w in watchers:
                assert w.task is not None
                await asyncio.wait_for(w.task, 5)
                assert w.error is not None
                assert w.error.code() == grpc.StatusCode.UNAVAILABLE, w.error
                assert error_reason(w.error) == "SERVER_SHUTTING_DOWN"
            assert doomed.watch.open_streams == 0
        await commit_flag(db_url, "gamma")
        resumed = watch(channel, cursor=watchers[0].last_cursor())
        await resumed.until(lambda w: len(w.changes()) >= 1)
        assert resumed.changes() == [("gamma", 1)]
        await resumed.stop()
