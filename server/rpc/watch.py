"""WatchFlags and WatchConfigs: cursors, filters and messages over the change feed.

A stream is one subscription to the process's change feed (server/changes/feed.py), which
owns the protocol: snapshot or cursor, catching up from the database, going live without
a gap, falling back to the database when the bounded queue overflows. What this module
adds is what a gRPC client sees: cursors (domain/cursor.py) that name this database, the
key and tenant filters, one message per event shared by every stream that sends it
(encoded once), heartbeats carrying the head cursor, and how a stream ends. A subscriber
whose queue overflowed and that makes no progress within STUCK_WRITE_S (a client that does
not read) is ended with RESOURCE_EXHAUSTED; it resumes by cursor.

Within one row identity, versions are delivered in increasing order: an event whose
version is not newer than the one already delivered on that stream is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from platform_admin.v1 import config_pb2, flag_pb2, watch_pb2

from domain import config_keys, cursor, events
from domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from domain.flags import check_key
from server.changes.feed import SNAPSHOT, ChangeFeed, Expired, Idle, Start, Subscription
from server.ops import metrics
from server.rpc.convert import config_to_proto, flag_to_proto, now
from server.rpc.errors import to_status
from server.security import principal as principal_ctx
from storage import stream
from storage.db import Database
from storage.stream import Snapshot

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# Events buffered per subscriber before it is sent back to the database.
QUEUE_LIMIT = 1000
MAX_KEYS = 1000
# A stream that was ended but has not finished by itself within this time is stuck in
# a write to a client that does not read: its task is cancelled and the status queued.
STUCK_WRITE_S = 0.5
READY_TIMEOUT_S = 10.0
_MESSAGE_CACHE = 4096

C = TypeVar("C", FlagChanged, ConfigChanged)


@dataclass(frozen=True)
class StreamKind(Generic[C]):
    """What differs between WatchFlags and WatchConfigs; everything else is shared."""

    name: str
    subject: str
    change: type[C]
    response: Callable[..., Message]
    changed_field: str
    to_proto: Callable[[C], Message]


FLAGS = StreamKind(
    name="flags",
    subject=events.FLAG_CHANGED,
    change=FlagChanged,
    response=flag_pb2.WatchFlagsResponse,
    changed_field="flag_changed",
    to_proto=flag_to_proto,
)
CONFIGS = StreamKind(
    name="configs",
    subject=events.CONFIG_CHANGED,
    change=ConfigChanged,
    response=config_pb2.WatchConfigsResponse,
    changed_field="config_changed",
    to_proto=config_to_proto,
)


class Subscriber:
    """One open stream: its subscription and how it ends."""

    __slots__ = ("context", "ended", "kind", "subscription", "task")

    def __init__(
        self,
        kind: StreamKind[Any],
        task: asyncio.Task[Any] | None,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.kind = kind
        self.task = task
        self.context = context
        self.subscription: Subscription | None = None
        self.ended: DomainError | None = None


class Watch:
    """The registry of open streams and the two stream handlers."""

    def __init__(
        self,
        db: Database,
        feed: ChangeFeed,
        heartbeat_s: float = HEARTBEAT_S,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.db = db
        self.feed = feed
        self.heartbeat_s = heartbeat_s
        self.queue_limit = queue_limit
        self.closing = False
        self._streams: set[Subscriber] = set()
        self._enforcers: set[asyncio.Task[None]] = set()
        self._messages: OrderedDict[tuple[uuid.UUID, str, int], Message] = OrderedDict()
        # Subscribers that stopped reading and were ended, and streams sent back to the
        # database after their queue overflowed, since start (operators' counters).
        self.cut_off = 0
        self.fell_behind = 0

    # -- registry ---------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def buffered_events(self) -> int:
        """Events waiting in all queues together (bounded by streams x queue_limit)."""
        return sum(len(s.subscription.queue) for s in self._streams if s.subscription)

    def _fall_behind(self, sub: Subscriber, subscription: Subscription) -> None:
        """A full queue: the subscription dropped it and reads from the database again.

        A burst (one transaction changing thousands of rows) only sends readers back to
        the database. A client that does not read at all is ended: its stream, stuck in
        a write, makes no progress within STUCK_WRITE_S.
        """
        self.fell_behind += 1
        metrics.watch_dropped(sub.kind.name, subscription.dropped)
        checker = asyncio.get_running_loop().create_task(
            self._check_progress(sub, subscription, subscription.progress)
        )
        self._enforcers.add(checker)
        checker.add_done_callback(self._enforcers.discard)

    async def _check_progress(self, sub: Subscriber, subscription: Subscription, mark: int) -> None:
        await asyncio.sleep(STUCK_WRITE_S)
        if sub.ended is None and subscription.progress == mark and sub in self._streams:
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
        if sub.subscription is not None:
            sub.subscription.close()
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
            change = event.change
            return keys is None or (isinstance(change, FlagChanged) and change.key in keys)

        async def snapshot() -> Snapshot[FlagChanged]:
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
            change = event.change
            if not isinstance(change, ConfigChanged):
                return False
            if keys is not None and change.key not in keys:
                return False
            return not tenant_only or change.visible_to_tenant(tenant_id)

        async def snapshot() -> Snapshot[ConfigChanged]:
            return await stream.config_snapshot(
                self.db, sorted(keys) if keys else None, tenant_id, tenant_only
            )

        async for message in self._serve(CONFIGS, request.cursor, accept, snapshot, context):
            yield message  # type: ignore[misc]

    async def _serve(
        self,
        kind: StreamKind[C],
        cursor_text: str,
        accept: Callable[[ChangeEvent], bool],
        snapshot: Callable[[], Awaitable[Snapshot[C]]],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Message]:
        given = cursor.decode(cursor_text) if cursor_text else None
        if self.closing:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason="SERVER_SHUTTING_DOWN",
            )
        sub = Subscriber(kind, asyncio.current_task(), context)
        self._streams.add(sub)
        metrics.watch_subscribed(kind.name)
        try:
            await self._ready()
            state = await stream.state(self.db)
            database_id = state.database_id
            after: int | Start = SNAPSHOT
            if given is not None:
                after = cursor.verify(given, database_id)
                head = self.feed.head_seq
                if after > head:
                    head = await stream.head(self.db)
                cursor.check_position(after, state.pruned_seq, head)
            sub.subscription = self.feed.subscribe(
                after,
                subjects=[kind.subject],
                accept=accept,
                queue_limit=self.queue_limit,
                idle_s=self.heartbeat_s,
                snapshot=snapshot,
                on_lagging=lambda subscription: self._fall_behind(sub, subscription),
            )
            delivered: dict[Hashable, int] = {}
            async for item in sub.subscription:
                _raise_if_ended(sub)
                if isinstance(item, ChangeEvent):
                    message = self._message(kind, database_id, item, delivered)
                    if message is not None:
                        yield message
                elif isinstance(item, Idle):
                    yield kind.response(
                        cursor=cursor.encode(database_id, item.position),
                        heartbeat=watch_pb2.Heartbeat(server_time=now()),
                    )
                elif isinstance(item, Snapshot):
                    for change in item.changes:
                        _raise_if_ended(sub)
                        delivered[change.identity] = change.version
                        yield kind.response(snapshot=kind.to_proto(change))
                    yield kind.response(
                        cursor=cursor.encode(database_id, item.head_seq),
                        snapshot_end=watch_pb2.SnapshotEnd(count=len(item.changes)),
                    )
                elif isinstance(item, Expired):
                    raise item.error
            _raise_if_ended(sub)
        finally:
            metrics.watch_unsubscribed(kind.name)
            self._streams.discard(sub)
            if sub.subscription is not None:
                sub.subscription.close()

    def _message(
        self,
        kind: StreamKind[C],
        database_id: uuid.UUID,
        event: ChangeEvent,
        delivered: dict[Hashable, int],
    ) -> Message | None:
        """The message for ``event`` on one stream, or None when the stream skips it."""
        change = event.change
        if not isinstance(change, kind.change):
            return None
        identity = change.identity
        if change.version <= delivered.get(identity, 0):
            return None  # not newer than what this stream already has
        delivered[identity] = change.version
        # One message per event, shared by every stream that sends it.
        key = (database_id, kind.name, event.seq)
        message = self._messages.get(key)
        if message is None:
            message = kind.response(
                cursor=cursor.encode(database_id, event.seq),
                **{kind.changed_field: kind.to_proto(change)},
            )
            self._messages[key] = message
            if len(self._messages) > _MESSAGE_CACHE:
                self._messages.popitem(last=False)
        metrics.watch_sent(kind.name)
        return message

    async def _ready(self) -> None:
        if self.feed.ready.is_set():
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.feed.ready.wait()
        except TimeoutError:
            raise Unavailable(
                "the change stream is not available yet; retry", reason="STREAM_NOT_READY"
            ) from None


def _raise_if_ended(sub: Subscriber) -> None:
    if sub.ended is not None:
        raise sub.ended


def _checked_keys(keys: Sequence[str], check: Callable[[str, str], str]) -> frozenset[str] | None:
    if not keys:
        return None
    if len(keys) > MAX_KEYS:
        raise InvalidArgument.field("keys", f"at most {MAX_KEYS} keys")
    return frozenset(check(f"keys[{i}]", key) for i, key in enumerate(keys))
