"""Watch-stream test helpers: a subscriber that records what it receives, flag writes in SQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import psycopg
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from server.app import App
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from storage import outbox
from storage.flags import FlagRow
from tests.helpers import failure_of

FLAG_COLUMNS = (
    "key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,"
    " is_archived, version, created_at, updated_at"
)
UPSERT_FLAG = (
    "INSERT INTO feature_flags (key, description) VALUES (%s, %s)"
    " ON CONFLICT (key) DO UPDATE SET description = EXCLUDED.description,"
    " version = feature_flags.version + 1, updated_at = now()"
    " RETURNING " + FLAG_COLUMNS
)


async def change_flag(conn: psycopg.AsyncConnection, key: str, description: str = "") -> int:
    """Creates or changes a flag with its outbox row, in the caller's transaction; its version."""
    cur = conn.cursor(row_factory=psycopg.rows.class_row(FlagRow))
    await cur.execute(UPSERT_FLAG, (key, description or key))
    row = await cur.fetchone()
    assert row is not None
    await outbox.append(conn, row.event())
    return row.version


async def connect(db_url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        db_url, autocommit=True, options="-c search_path=platform_admin"
    )


async def commit_flag(db_url: str, key: str, description: str = "") -> int:
    async with await connect(db_url) as conn, conn.transaction():
        return await change_flag(conn, key, description)


@dataclass
class Received:
    kind: str
    cursor: str
    key: str = ""
    version: int = 0
    at: float = 0.0  # time.monotonic() when received
    wall: float = 0.0  # time.time() when received (compared with database timestamps)


@dataclass
class Watcher:
    """A WatchFlags call read by a background task into ``messages``."""

    call: Any
    messages: list[Received] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read(self) -> None:
        try:
            async for m in self.call:
                what = m.WhichOneof("event")
                flag = getattr(m, what) if what in ("snapshot", "flag_changed") else None
                self.messages.append(
                    Received(
                        what,
                        m.cursor,
                        flag.key if flag else "",
                        int(flag.etag) if flag else 0,
                        time.monotonic(),
                        time.time(),
                    )
                )
                self.changed.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.changed.set()

    async def until(self, done: Callable[[Watcher], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            if self.task is not None and self.task.done() and not done(self):
                raise AssertionError(f"stream ended: {self.error}; got {self.summary()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {self.summary()}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    def changes(self) -> list[tuple[str, int]]:
        return [(m.key, m.version) for m in self.messages if m.kind == "flag_changed"]

    def snapshot(self) -> dict[str, int]:
        return {m.key: m.version for m in self.messages if m.kind == "snapshot"}

    def snapshot_done(self) -> bool:
        return any(m.kind == "snapshot_end" for m in self.messages)

    def last_cursor(self) -> str:
        return next(m.cursor for m in reversed(self.messages) if m.cursor)

    def state(self) -> dict[str, int]:
        """key -> latest version, from snapshot and changes."""
        out: dict[str, int] = {}
        for m in self.messages:
            if m.kind in ("snapshot", "flag_changed"):
                out[m.key] = m.version
        return out

    def summary(self) -> list[tuple[str, str, int]]:
        return [(m.kind, m.key, m.version) for m in self.messages[-20:]]

    async def stop(self) -> None:
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def watch(channel: grpc.aio.Channel, cursor: str = "", keys: list[str] | None = None) -> Watcher:
    stub = flag_pb2_grpc.FlagServiceStub(channel)
    call = stub.WatchFlags(flag_pb2.WatchFlagsRequest(cursor=cursor, keys=keys or []))
    watcher = Watcher(call)
    watcher.task = asyncio.create_task(watcher._read())
    return watcher


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return failure_of(error).reason


@contextlib.asynccontextmanager
async def replica(
    db_url: str, settings: Settings, sequencer: bool = True, **changes: Any
) -> AsyncIterator[App]:
    """One more App on 127.0.0.1:0 in this event loop (a second replica).

    ``sequencer=False`` leaves sequencing to the other replicas, so this one learns of
    new events only through NOTIFY and its poll.
    """
    app = App(replace(settings, **changes), db_url, authorizer=AllowAll())
    if not sequencer:
        app.background.remove(app.sequencer.run)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


@contextlib.asynccontextmanager
async def channel_to(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch
