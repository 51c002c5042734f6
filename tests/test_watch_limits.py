"""What one caller can make a server hold through WatchFlags / WatchConfigs.

Snapshots are read and written a page at a time (and stay exact when rows change while a
client reads them), a client that does not read its snapshot is ended after the snapshot
deadline, and open streams are capped per process and per principal, with
RESOURCE_EXHAUSTED and a reason beyond either cap.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import grpc
import psycopg
import pytest
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import flag_pb2_grpc

from server.ops import metrics
from tests.auth_helpers import ADMIN, READER, SERVICE, as_caller, running_app
from tests.helpers import failure_of
from tests.watch_helpers import commit_flag

LONG = "d" * 1900  # a snapshot of a few hundred such flags is far beyond HTTP/2 windows


def seed_flags(sql: psycopg.Connection, count: int, description: str = LONG) -> None:
    """Flags straight into the table (a snapshot reads the table)."""
    sql.execute(
        "INSERT INTO feature_flags (key, description)"
        " SELECT 'bulk.f-' || lpad(i::text, 5, '0'), %s FROM generate_series(1, %s) AS i",
        (description, count),
    )


async def _first(call: Any) -> Any:
    return await asyncio.wait_for(call.read(), 10)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def _refused(name: str, reason: str) -> float:
    value = metrics.WATCH_REFUSED.labels(name, reason)._value.get()
    return float(value)


async def test_streams_are_capped_per_principal_and_per_process(db_url, settings):
    capped = replace(settings, watch_max_streams=3, watch_max_streams_per_principal=2)
    async with (
        running_app(db_url, capped) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        opened = []

        async def open_stream(caller: Any) -> Any:
            call = flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(caller))
            first = await _first(call)
            assert first.WhichOneof("event") == "snapshot_end"
            opened.append(call)
            return call

        async def refused(caller: Any, reason: str) -> None:
            call = flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(caller))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _first(call)
            failure = failure_of(error.value)
            assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.message
            assert failure.reason == reason
            assert "PLATFORM_ADMIN_WATCH_MAX_STREAMS" in failure.message

        before = _refused("flags", "TOO_MANY_STREAMS_FOR_PRINCIPAL")
        first_admin = await open_stream(ADMIN)
        await open_stream(ADMIN)
        await refused(ADMIN, "TOO_MANY_STREAMS_FOR_PRINCIPAL")
        assert _refused("flags", "TOO_MANY_STREAMS_FOR_PRINCIPAL") == before + 1
        await open_stream(READER)  # another principal: its own allowance
        await refused(SERVICE, "TOO_MANY_STREAMS")  # but the process holds 3, its cap
        assert app.watch.open_streams == 3
        # Closing a stream frees its place.
        first_admin.cancel()
        await _until(lambda: app.watch.open_streams == 2)
        await open_stream(SERVICE)
        # Streams that were admitted keep working.
        version = await commit_flag(db_url, "cap.after")
        message = await _first(opened[-1])
        assert (message.flag_changed.key, int(message.flag_changed.etag)) == ("cap.after", version)
        for call in opened:
            call.cancel()


async def test_a_client_that_does_not_read_its_snapshot_is_ended(db_url, settings, sql):
    seed_flags(sql, 1000)
    quick = replace(settings, watch_snapshot_deadline_s=1.0)
    no_window_growth = [("grpc.http2.bdp_probe", 0)]
    async with (
        running_app(db_url, quick) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=no_window_growth) as channel,
    ):
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        before = _refused("flags", "SNAPSHOT_TOO_SLOW")
        call = flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(SERVICE))
        await asyncio.sleep(1.0)  # not reading: the server is stuck writing
        await _until(lambda: app.watch.open_streams == 0, 10)  # the deadline ended it
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                message = await asyncio.wait_for(call.read(), 10)
                if message is grpc.aio.EOF:
                    break
                assert message.WhichOneof("event") == "snapshot"
                received += 1
        failure = failure_of(ended.value)
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.reason == "SNAPSHOT_TOO_SLOW"
        assert "PLATFORM_ADMIN_WATCH_SNAPSHOT_DEADLINE_S" in failure.message
        assert 0 < received < 1000
        assert _refused("flags", "SNAPSHOT_TOO_SLOW") == before + 1
        # A client that reads gets the whole snapshot under the same deadline.
        full = flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(SERVICE))
        rows, _ = await _read_snapshot(full)
        assert len(rows) == 1000
        full.cancel()


async def _read_snapshot(call: Any, already: int = 0) -> tuple[list[tuple[str, int]], str]:
    rows: list[tuple[str, int]] = []
    while (message := await _first(call)) is not grpc.aio.EOF:
        if message.WhichOneof("event") == "snapshot_end":
            assert message.snapshot_end.count == already + len(rows)
            return rows, message.cursor
        rows.append((message.snapshot.key, int(message.snapshot.etag)))
    raise AssertionError("no snapshot_end")


async def test_a_snapshot_stays_exact_while_rows_change_during_it(db_url, settings, sql):
    """Pages are read as the client reads: rows changed after their page was read are sent
    again with their new state, rows created meanwhile appear, and resuming from the
    snapshot's cursor repeats none of the versions it showed."""
    seed_flags(sql, 600)
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.http2.bdp_probe", 0)]
        ) as channel,
    ):
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        call = flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(SERVICE))
        first = await _first(call)
        assert first.snapshot.key == "bulk.f-00001"
        await asyncio.sleep(0.3)  # the server is now blocked writing a page mid-way
        early = await commit_flag(db_url, "bulk.f-00002", "changed early")  # sent already
        late = await commit_flag(db_url, "bulk.f-00599", "changed late")  # not read yet
        created = await commit_flag(db_url, "bulk.f-00003a", "created during the snapshot")
        rows, snapshot_cursor = await _read_snapshot(call, already=1)
        call.cancel()
        rows.insert(0, (first.snapshot.key, int(first.snapshot.etag)))
        latest = dict(rows)  # a later snapshot message for a row replaces an earlier one
        assert len(latest) == 601 and len(rows) == 602  # 600, one created, one re-sent
        assert latest["bulk.f-00002"] == early == 2
        assert latest["bulk.f-00599"] == late == 2
        assert latest["bulk.f-00003a"] == created == 1
        assert rows.count(("bulk.f-00599", 1)) == 0  # read after the change: sent once
        # Resuming from the snapshot's cursor gives what came after it, and nothing it had.
        after = await commit_flag(db_url, "bulk.f-00600", "after the snapshot")
        resumed = flags.WatchFlags(
            fpb.WatchFlagsRequest(cursor=snapshot_cursor), metadata=as_caller(SERVICE)
        )
        message = await _first(resumed)
        assert (message.flag_changed.key, int(message.flag_changed.etag)) == (
            "bulk.f-00600",
            after,
        )
        resumed.cancel()


@pytest.fixture
def settings(settings):
    return replace(settings, watch_heartbeat_s=30.0)
