"""WatchFlags and WatchConfigs: one streaming mechanism over the change stream.

A stream starts with a snapshot (read with its head seq in one REPEATABLE READ
transaction) or from a cursor, catches up from the database page by page, then goes
live: it registers with the process's fan-out at the tail's head and reads the small gap
up to that head once more, so nothing is missed and duplicates (by seq) are skipped.
Live events arrive in a bounded per-subscriber queue filled by the tail's listener; a
subscriber whose queue is full is ended with RESOURCE_EXHAUSTED (it resumes by cursor),
so memory stays bounded and nobody else waits for it. While waiting, a stream holds no
pooled connection. Idle streams get heartbeats carrying the head cursor.

Within one row identity, versions are delivered in increasing order: an event whose
version is not newer than the one already delivered on that stream is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import config_pb2, flag_pb2, watch_pb2

from domain import config_keys, cursor
from domain.config_keys import Scope
from domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from domain.etags import format_etag
from domain.flags import check_key
from server.changes.tail import Tail
from server.ops import metrics
from server.rpc.convert import SCOPE_TO_PROTO, value_to_proto
from server.rpc.errors import to_status
from server.security import principal as principal_ctx
from storage import outbox, stream
from storage.db import Database
from storage.stream import ChangeEvent, Snapshot

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# Events buffered per subscriber before it is cut off as too slow.
QUEUE_LIMIT = 1000
CATCH_UP_PAGE = 500
MAX_KEYS = 1000
# A stream that was ended but has not finished by itself within this time is stuck in
# a write to a client that does not read: its task is cancelled and the status queued.
STUCK_WRITE_S = 0.5
READY_TIMEOUT_S = 10.0
_MESSAGE_CACHE = 4096


def _timestamp(iso: str | None) -> Timestamp | None:
    if not iso:
        return None
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(iso))
    return ts


def flag_from_payload(p: dict[str, Any]) -> flag_pb2.Flag:
    return flag_pb2.Flag(
        key=p["key"],
        description=p.get("description") or "",
        default_enabled=bool(p.get("default_enabled")),
        enabled_tenant_ids=sorted(p.get("enabled_tenant_ids") or ()),
        disabled_tenant_ids=sorted(p.get("disabled_tenant_ids") or ()),
        archived=bool(p.get("archived")),
        create_time=_timestamp(p.get("create_time")),
        update_time=_timestamp(p.get("update_time")),
        etag=format_etag(int(p["version"])),
    )


def config_from_payload(p: dict[str, Any]) -> config_pb2.Config:
    return config_pb2.Config(
        key=p["key"],
        scope=SCOPE_TO_PROTO[Scope(p["scope"])],
        tenant_id=p.get("tenant_id") or "",
        node_id=p.get("node_id") or "",
        value=value_to_proto(p["value"]),
        description=p.get("description") or "",
        archived=bool(p.get("archived")),
        update_time=_timestamp(p.get("update_time")),
        etag=format_etag(int(p["version"])),
    )


@dataclass(frozen=True)
class StreamKind:
    """What differs between WatchFlags and WatchConfigs; everything else is shared."""

    name: str
    subject: str
    response: Callable[..., Message]
    changed_field: str
    to_proto: Callable[[dict[str, Any]], Message]
    identity: Callable[[dict[str, Any]], Hashable]


FLAGS = StreamKind(
    name="flags",
    subject=outbox.FLAG_CHANGED,
    response=flag_pb2.WatchFlagsResponse,
    changed_field="flag_changed",
    to_proto=flag_from_payload,
    identity=lambda p: p["key"],
)
CONFIGS = StreamKind(
    name="configs",
    subject=outbox.CONFIG_CHANGED,
    response=config_pb2.WatchConfigsResponse,
    changed_field="config_changed",
    to_proto=config_from_payload,
    identity=lambda p: (p["key"], p["scope"], p.get("tenant_id"), p.get("node_id")),
)

Accept = Callable[[ChangeEvent], bool]


class Subscriber:
    """One open stream: its bounded queue and how it ends."""

    __slots__ = (
        "accept",
        "context",
        "ended",
        "events",
        "kind",
        "lagging",
        "progress",
        "task",
        "wake",
    )

    def __init__(
        self,
        kind: StreamKind,
        accept: Accept,
        task: asyncio.Task[Any] | None,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.kind = kind
        self.accept = accept
        self.task = task
        self.context = context
        self.events: deque[ChangeEvent] = deque()
        self.wake = asyncio.Event()
        self.ended: DomainError | None = None
        # Set when the queue overflowed: the stream catches up from the database again.
        self.lagging = False
        # Events handled so far (sent or skipped): a stream that makes none while lagging
        # is stuck in a write to a client that does not read.
        self.progress = 0


class Watch:
    """The registry of open streams and the two stream handlers."""

    def __init__(
        self,
        db: Database,
        tail: Tail,
        heartbeat_s: float = HEARTBEAT_S,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.db = db
        self.tail = tail
        self.heartbeat_s = heartbeat_s
        self.queue_limit = queue_limit
        self.closing = False
        # Streams by subject that receive live events; all open streams.
        self._live: dict[str, set[Subscriber]] = {FLAGS.subject: set(), CONFIGS.subject: set()}
        self._streams: set[Subscriber] = set()
        self._enforcers: set[asyncio.Task[None]] = set()
        self._messages: OrderedDict[tuple[uuid.UUID, str, int], Message] = OrderedDict()
        # Subscribers that stopped reading and were ended, and streams sent back to the
        # database after their queue overflowed, since start (operators' counters).
        self.cut_off = 0
        self.fell_behind = 0
        tail.add_listener(self._on_events)
        tail.add_gap_listener(self._on_gap)

    # -- registry ---------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def buffered_events(self) -> int:
        """Events waiting in all queues together (bounded by streams x queue_limit)."""
        return sum(len(s.events) for s in self._streams)

    def _on_events(self, events: list[ChangeEvent]) -> None:
        """Tail listener: appends each event to the queue of every stream that wants it."""
        by_subject: dict[str, list[ChangeEvent]] = {}
        for event in events:
            if event.subject in self._live:
                by_subject.setdefault(event.subject, []).append(event)
        for subject, batch in by_subject.items():
            for sub in list(self._live[subject]):
                wanted = [e for e in batch if sub.accept(e)]
                if not wanted:
                    continue
                if len(sub.events) + len(wanted) > self.queue_limit:
                    metrics.watch_dropped(sub.kind.name, len(sub.events) + len(wanted))
                    self._fall_behind(sub)
                    continue
                sub.events.extend(wanted)
                sub.wake.set()

    def _on_gap(self) -> None:
        """The tail lost events: live streams cannot continue; their cursors decide."""
        for sub in [s for subs in self._live.values() for s in subs]:
            self._end(
                sub,
                Unavailable(
                    "this server fell behind the change stream; resume with the last cursor"
                    " received",
                    reason="STREAM_RESTARTED",
                ),
            )

    def _fall_behind(self, sub: Subscriber) -> None:
        """A full queue: the queue is dropped and the stream reads from the database again.

        A burst (one transaction changing thousands of rows) only sends readers back to
        the database. A client that does not read at all is ended: its stream, stuck in
        a write, makes no progress within STUCK_WRITE_S.
        """
        self.fell_behind += 1
        sub.events.clear()
        self._live[sub.kind.subject].discard(sub)
        sub.lagging = True
        sub.wake.set()
        checker = asyncio.get_running_loop().create_task(self._check_progress(sub, sub.progress))
        self._enforcers.add(checker)
        checker.add_done_callback(self._enforcers.discard)

    async def _check_progress(self, sub: Subscriber, mark: int) -> None:
        await asyncio.sleep(STUCK_WRITE_S)
        if sub.ended is None and sub.progress == mark and sub in self._streams:
            self.cut_off += 1
            self._end(
                sub,
                ResourceExhausted(
                    f"the subscriber fell more than {self.queue_limit} changes behind and"
                    " stopped reading; resume with the last cursor received",
                    reason="SUBSCRIBER_TOO_SLOW",
                ),
            )

    def _end(self, sub: Subscriber, error: DomainError) -> None:
        if sub.ended is not None:
            return
        sub.ended = error
        sub.events.clear()
        self._live[sub.kind.subject].discard(sub)
        sub.wake.set()
        enforcer = asyncio.get_running_loop().create_task(self._enforce(sub, error))
        self._enforcers.add(enforcer)
        enforcer.add_done_callback(self._enforcers.discard)

    async def _enforce(self, sub: Subscriber, error: DomainError) -> None:
        """Ends a stream stuck in a write to a client that does not read.

        Its task is cancelled and the status queued behind the data already sent: the
        client sees the messages it had not read, then the status.
        """
        task = sub.task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=STUCK_WRITE_S)
        if done:
            return
        task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await sub.context.abort_with_status(to_status(error))

    async def close(self, timeout: float) -> None:
        """Ends every open stream with UNAVAILABLE (clients resume elsewhere by cursor)."""
        self.closing = True
        for sub in list(self._streams):
            self._end(
                sub,
                Unavailable(
                    "the server is shutting down; resume with the last cursor received",
                    reason="SERVER_SHUTTING_DOWN",
                ),
            )
        waits: list[Awaitable[Any]] = [s.task for s in self._streams if s.task is not None]
        waits += list(self._enforcers)
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=timeout)

    # -- the handlers -----------------------------------------------------------------

    async def WatchFlags(
        self, request: flag_pb2.WatchFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[flag_pb2.WatchFlagsResponse]:
        keys = _checked_keys(request.keys, check_key)

        def accept(event: ChangeEvent) -> bool:
            return keys is None or event.payload.get("key") in keys

        async def snapshot() -> Snapshot:
            return await stream.flag_snapshot(self.db, sorted(keys) if keys else None)

        async for message in self._serve(FLAGS, request.cursor, accept, snapshot, context):
            yield message  # type: ignore[misc]

    async def WatchConfigs(
        self, request: config_pb2.WatchConfigsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.WatchConfigsResponse]:
        keys = _checked_keys(request.keys, lambda field, key: config_keys.spec_for(field, key).key)
        who = principal_ctx.current()
        tenant_only, tenant_id = who.is_tenant_scoped, who.tenant_id

        def accept(event: ChangeEvent) -> bool:
            p = event.payload
            if keys is not None and p.get("key") not in keys:
                return False
            # A tenant admin sees PLATFORM rows and its own tenant's rows, nothing else.
            return (
                not tenant_only
                or p.get("scope") == "PLATFORM"
                or (p.get("scope") == "TENANT" and p.get("tenant_id") == tenant_id)
            )

        async def snapshot() -> Snapshot:
            return await stream.config_snapshot(
                self.db, sorted(keys) if keys else None, tenant_id, tenant_only
            )

        async for message in self._serve(CONFIGS, request.cursor, accept, snapshot, context):
            yield message  # type: ignore[misc]

    async def _serve(
        self,
        kind: StreamKind,
        cursor_text: str,
        accept: Accept,
        snapshot: Callable[[], Awaitable[Snapshot]],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Message]:
        given = cursor.decode(cursor_text) if cursor_text else None
        if self.closing:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason="SERVER_SHUTTING_DOWN",
            )
        sub = Subscriber(kind, accept, asyncio.current_task(), context)
        self._streams.add(sub)
        metrics.watch_subscribed(kind.name)
        try:
            await self._ready()
            state = await stream.state(self.db)
            database_id = state.database_id
            delivered: dict[Hashable, int] = {}
            if given is not None:
                position = cursor.verify(given, database_id)
                head = self.tail.head_seq
                if position > head:
                    head = await stream.head(self.db)
                cursor.check_position(position, state.pruned_seq, head)
            else:
                snap = await snapshot()
                for payload in snap.payloads:
                    _raise_if_ended(sub)
                    delivered[kind.identity(payload)] = int(payload["version"])
                    yield kind.response(snapshot=kind.to_proto(payload))
                position = snap.head_seq
                yield kind.response(
                    cursor=cursor.encode(database_id, position),
                    snapshot_end=watch_pb2.SnapshotEnd(count=len(snap.payloads)),
                )

            while True:  # each round: catch up from the database, then follow the tail
                # Catch up from the database until a short page: near the head.
                while True:
                    _raise_if_ended(sub)
                    events = await stream.read_after(
                        self.db, position, CATCH_UP_PAGE, subjects=[kind.subject]
                    )
                    sub.progress += 1
                    for event in events:
                        message = self._message(kind, database_id, event, delivered, accept)
                        position = event.seq
                        sub.progress += 1
                        if message is not None:
                            yield message
                    if len(events) < CATCH_UP_PAGE:
                        break

                # Go live: from here every batch after the tail's head reaches the queue;
                # the gap up to that head is read once more from the database.
                _raise_if_ended(sub)
                sub.lagging = False
                live_from = self.tail.head_seq
                self._live[kind.subject].add(sub)
                while live_from > position:
                    events = await stream.read_after(
                        self.db, position, CATCH_UP_PAGE, upto=live_from, subjects=[kind.subject]
                    )
                    for event in events:
                        message = self._message(kind, database_id, event, delivered, accept)
                        position = event.seq
                        sub.progress += 1
                        if message is not None:
                            yield message
                    if len(events) < CATCH_UP_PAGE:
                        break
                position = max(position, live_from)

                last_sent = time.monotonic()
                while not sub.lagging:
                    _raise_if_ended(sub)
                    if sub.events:
                        event = sub.events.popleft()
                        sub.progress += 1
                        if event.seq <= position:
                            continue
                        position = event.seq
                        message = self._message(kind, database_id, event, delivered, accept)
                        if message is not None:
                            yield message
                            last_sent = time.monotonic()
                        continue
                    idle_for = self.heartbeat_s - (time.monotonic() - last_sent)
                    if idle_for <= 0:
                        # The queue is empty: every event up to the tail's head was handled.
                        position = max(position, self.tail.head_seq)
                        yield kind.response(
                            cursor=cursor.encode(database_id, position),
                            heartbeat=watch_pb2.Heartbeat(server_time=_now()),
                        )
                        last_sent = time.monotonic()
                        continue
                    sub.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(idle_for):
                            await sub.wake.wait()
        finally:
            metrics.watch_unsubscribed(kind.name)
            self._streams.discard(sub)
            self._live[kind.subject].discard(sub)
            sub.events.clear()

    def _message(
        self,
        kind: StreamKind,
        database_id: uuid.UUID,
        event: ChangeEvent,
        delivered: dict[Hashable, int],
        accept: Accept,
    ) -> Message | None:
        """The message for ``event`` on one stream, or None when the stream skips it."""
        if event.subject != kind.subject or not accept(event):
            return None
        identity = kind.identity(event.payload)
        version = int(event.payload.get("version", 0))
        if version <= delivered.get(identity, 0):
            return None  # not newer than what this stream already has
        delivered[identity] = version
        # One message per event, shared by every stream that sends it.
        key = (database_id, kind.name, event.seq)
        message = self._messages.get(key)
        if message is None:
            message = kind.response(
                cursor=cursor.encode(database_id, event.seq),
                **{kind.changed_field: kind.to_proto(event.payload)},
            )
            self._messages[key] = message
            if len(self._messages) > _MESSAGE_CACHE:
                self._messages.popitem(last=False)
        metrics.watch_sent(kind.name)
        return message

    async def _ready(self) -> None:
        if self.tail.ready.is_set():
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.tail.ready.wait()
        except TimeoutError:
            raise Unavailable(
                "the change stream is not available yet; retry", reason="STREAM_NOT_READY"
            ) from None


def _raise_if_ended(sub: Subscriber) -> None:
    if sub.ended is not None:
        raise sub.ended


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _checked_keys(keys: Sequence[str], check: Callable[[str, str], str]) -> frozenset[str] | None:
    if not keys:
        return None
    if len(keys) > MAX_KEYS:
        raise InvalidArgument.field("keys", f"at most {MAX_KEYS} keys")
    return frozenset(check(f"keys[{i}]", key) for i, key in enumerate(keys))
