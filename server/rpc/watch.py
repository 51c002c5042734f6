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
import bisect
import contextlib
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from platform_admin.v1 import config_pb2, flag_pb2, watch_pb2

from domain import config_keys, cursor
from domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from domain.flags import check_key
from server.changes.feed import ChangeFeed, Expired, Idle, Subscription
from server.ops import metrics
from server.rpc.convert import config_to_proto, flag_to_proto, now
from server.rpc.errors import to_status
from server.security import principal as principal_ctx
from storage import stream
from storage.db import Database

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# Events buffered per subscriber before it is sent back to the database.
QUEUE_LIMIT = 1000
MAX_KEYS = 1000
# A stream that was ended but has not finished by itself within this time is stuck in
# a write to a client that does not read: its task is cancelled and the status queued.
STUCK_WRITE_S = 0.5
READY_TIMEOUT_S = 10.0
# What one caller can make a process hold (PLATFORM_ADMIN_WATCH_* settings): open streams
# per process and per principal, and how long a snapshot may take to be written.
MAX_STREAMS = 5000
MAX_STREAMS_PER_PRINCIPAL = 1000
SNAPSHOT_DEADLINE_S = 60.0
_MESSAGE_CACHE = 4096

C = TypeVar("C", FlagChanged, ConfigChanged)


@dataclass(frozen=True)
class StreamKind(Generic[C]):
    """What differs between WatchFlags and WatchConfigs; everything else is shared."""

    name: str  # metrics label
    change: type[C]  # the event this stream carries (its subject is the change's)
    response: Callable[..., Message]
    changed_field: str  # the response field of a change message
    to_proto: Callable[[C], Message]
    # A row's place in snapshot (keyset) order.
    position: Callable[[C], stream.Position]


FLAGS = StreamKind(
    "flags",
    FlagChanged,
    flag_pb2.WatchFlagsResponse,
    "flag_changed",
    flag_to_proto,
    stream.flag_position,
)
CONFIGS = StreamKind(
    "configs",
    ConfigChanged,
    config_pb2.WatchConfigsResponse,
    "config_changed",
    config_to_proto,
    stream.config_position,
)


@dataclass(eq=False, slots=True)
class Subscriber:
    """One open stream: its subscription and how it ends."""

    kind: StreamKind[Any]
    task: asyncio.Task[Any] | None
    context: grpc.aio.ServicerContext
    # Whose stream it is (the token's sub; None with authentication off).
    principal: str | None = None
    subscription: Subscription | None = None
    ended: DomainError | None = None


Q = TypeVar("Q")
M = TypeVar("M")


def served_by(
    handler: Callable[[Q, grpc.aio.ServicerContext], AsyncIterator[M]] | None,
    rpc: str,
    request: Q,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[M]:
    """The stream ``handler`` serves (itself, not another generator around it: every
    layer costs each delivery); UNIMPLEMENTED where the server runs no watch."""
    if handler is None:
        return _unimplemented(rpc, context)
    return handler(request, context)


async def _unimplemented(rpc: str, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not available")
    yield  # pragma: no cover  (a generator, as stream handlers are)


@dataclass(eq=False)
class Watch:
    """The registry of open streams and the two stream handlers."""

    db: Database
    feed: ChangeFeed
    heartbeat_s: float = HEARTBEAT_S
    queue_limit: int = QUEUE_LIMIT
    max_streams: int = MAX_STREAMS
    max_streams_per_principal: int = MAX_STREAMS_PER_PRINCIPAL
    snapshot_deadline_s: float = SNAPSHOT_DEADLINE_S
    closing: bool = field(default=False, init=False)
    # Subscribers that stopped reading and were ended, and streams sent back to the
    # database after their queue overflowed, since start (operators' counters).
    cut_off: int = field(default=0, init=False)
    fell_behind: int = field(default=0, init=False)
    _per_principal: Counter[str | None] = field(default_factory=Counter, init=False)
    _streams: set[Subscriber] = field(default_factory=set, init=False)
    _enforcers: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _messages: OrderedDict[tuple[uuid.UUID, str, int], bytes] = field(
        default_factory=OrderedDict, init=False
    )

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

    def WatchFlags(
        self, request: flag_pb2.WatchFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[flag_pb2.WatchFlagsResponse | bytes]:
        """The stream (a change message as bytes, encoded once for every stream)."""
        keys = _checked_keys(request.keys, check_key)

        def accept(event: ChangeEvent) -> bool:
            change = event.change
            return keys is None or (isinstance(change, FlagChanged) and change.key in keys)

        def snapshot() -> AsyncIterator[stream.SnapshotPage[FlagChanged]]:
            return stream.flag_snapshot_pages(self.db, sorted(keys) if keys else None)

        return self._serve(FLAGS, request.cursor, accept, snapshot, context)  # type: ignore[return-value]

    def WatchConfigs(
        self, request: config_pb2.WatchConfigsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.WatchConfigsResponse | bytes]:
        """The stream (a change message as bytes, encoded once for every stream)."""
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

        def snapshot() -> AsyncIterator[stream.SnapshotPage[ConfigChanged]]:
            return stream.config_snapshot_pages(
                self.db, sorted(keys) if keys else None, tenant_id, tenant_only
            )

        return self._serve(CONFIGS, request.cursor, accept, snapshot, context)  # type: ignore[return-value]

    async def _serve(
        self,
        kind: StreamKind[C],
        cursor_text: str,
        accept: Callable[[ChangeEvent], bool],
        snapshot: Callable[[], AsyncIterator[stream.SnapshotPage[C]]],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Message | bytes]:
        given = cursor.decode(cursor_text) if cursor_text else None
        if self.closing:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason="SERVER_SHUTTING_DOWN",
            )
        principal = principal_ctx.current().subject
        self._admit(kind, principal)
        sub = Subscriber(kind, asyncio.current_task(), context, principal)
        self._streams.add(sub)
        self._per_principal[principal] += 1
        metrics.watch_subscribed(kind.name)
        shown: dict[Hashable, int] = {}
        try:
            await self._ready()
            state = await stream.state(self.db)
            database_id = state.database_id
            if given is not None:
                after = cursor.verify(given, database_id)
                head = self.feed.head_seq
                if after > head:
                    head = await stream.head(self.db)
                cursor.check_position(after, state.pruned_seq, head)
            else:
                end: list[int] = []
                async for row in self._snapshot(
                    kind, accept, snapshot, database_id, sub, end, shown
                ):
                    yield row
                after = end[0]
            sub.subscription = self.feed.subscribe(
                after,
                subjects=[kind.change.subject],
                accept=accept,
                queue_limit=self.queue_limit,
                idle_s=self.heartbeat_s,
                on_lagging=lambda subscription: self._fall_behind(sub, subscription),
            )
            # Versions delivered per row since the snapshot. Its rows all have seqs up to its
            # cursor, so every live event is newer than what it showed, but for the rows whose
            # change was not yet sequenced when their page was read (``shown``).
            delivered: dict[Hashable, int] = shown
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
                elif isinstance(item, Expired):
                    raise item.error
            _raise_if_ended(sub)
        finally:
            metrics.watch_unsubscribed(kind.name)
            self._streams.discard(sub)
            self._per_principal[principal] -= 1
            if self._per_principal[principal] <= 0:
                del self._per_principal[principal]
            if sub.subscription is not None:
                sub.subscription.close()

    def _admit(self, kind: StreamKind[Any], principal: str | None) -> None:
        """RESOURCE_EXHAUSTED when this process, or this caller, has too many open streams."""
        if len(self._streams) >= self.max_streams:
            metrics.watch_refused(kind.name, "TOO_MANY_STREAMS")
            raise ResourceExhausted(
                f"this server has {self.max_streams} open watch streams, its limit"
                " (PLATFORM_ADMIN_WATCH_MAX_STREAMS); retry later or on another replica",
                reason="TOO_MANY_STREAMS",
            )
        if self._per_principal[principal] >= self.max_streams_per_principal:
            metrics.watch_refused(kind.name, "TOO_MANY_STREAMS_FOR_PRINCIPAL")
            raise ResourceExhausted(
                f"the caller has {self.max_streams_per_principal} open watch streams on this"
                " server, its limit (PLATFORM_ADMIN_WATCH_MAX_STREAMS_PER_PRINCIPAL); close"
                " some first",
                reason="TOO_MANY_STREAMS_FOR_PRINCIPAL",
            )

    async def _snapshot(
        self,
        kind: StreamKind[C],
        accept: Callable[[ChangeEvent], bool],
        pages: Callable[[], AsyncIterator[stream.SnapshotPage[C]]],
        database_id: uuid.UUID,
        sub: Subscriber,
        end: list[int],
        shown: dict[Hashable, int],
    ) -> AsyncIterator[Message]:
        """The snapshot messages and snapshot_end; appends the cursor's seq to ``end``, and
        to ``shown`` the version sent of each row whose event will come after the cursor.

        Rows are read and written a page at a time (storage/stream.py), so a stream holds
        one page, not the table, and no connection while it writes. Each page is exact as
        of its own head; a row changed after its page was read is sent again, later in the
        snapshot, with the state as of the last page's head, which is the cursor: every
        version the snapshot shows has a seq up to it. A client that does not read the
        snapshot within snapshot_deadline_s is ended with RESOURCE_EXHAUSTED.
        """
        overdue = asyncio.get_running_loop().call_later(
            self.snapshot_deadline_s, self._snapshot_overdue, sub
        )
        try:
            lasts: list[stream.Position] = []
            heads: list[int] = []
            count = 0
            async for page in pages():
                _raise_if_ended(sub)
                if page.last is not None:
                    lasts.append(page.last)
                heads.append(page.head_seq)
                for change in page.changes:
                    _raise_if_ended(sub)
                    count += 1
                    if change.identity in page.unsequenced:
                        shown[change.identity] = change.version
                    yield kind.response(snapshot=kind.to_proto(change))
                del page
            # Changes to rows after their page was read, up to the last page's head.
            position, last_head = heads[0], heads[-1]
            while position < last_head:
                batch = await stream.read_after(
                    self.db,
                    position,
                    stream.SNAPSHOT_PAGE,
                    upto=last_head,
                    subjects=[kind.change.subject],
                )
                for event in batch:
                    position = event.seq
                    changed = event.change
                    if not isinstance(changed, kind.change) or not accept(event):
                        continue
                    if event.seq > heads[bisect.bisect_left(lasts, kind.position(changed))]:
                        _raise_if_ended(sub)
                        count += 1
                        yield kind.response(snapshot=kind.to_proto(changed))
                if len(batch) < stream.SNAPSHOT_PAGE:
                    break
            _raise_if_ended(sub)
            yield kind.response(
                cursor=cursor.encode(database_id, last_head),
                snapshot_end=watch_pb2.SnapshotEnd(count=count),
            )
            end.append(last_head)
        finally:
            overdue.cancel()

    def _snapshot_overdue(self, sub: Subscriber) -> None:
        if sub.ended is None and sub in self._streams:
            metrics.watch_refused(sub.kind.name, "SNAPSHOT_TOO_SLOW")
            self._end(
                sub,
                ResourceExhausted(
                    f"the snapshot was not read within {self.snapshot_deadline_s:g} s"
                    " (PLATFORM_ADMIN_WATCH_SNAPSHOT_DEADLINE_S); reconnect and read it",
                    reason="SNAPSHOT_TOO_SLOW",
                ),
            )

    def _message(
        self,
        kind: StreamKind[C],
        database_id: uuid.UUID,
        event: ChangeEvent,
        delivered: dict[Hashable, int],
    ) -> bytes | None:
        """The encoded message for ``event`` on one stream, or None when it skips it."""
        change = event.change
        if not isinstance(change, kind.change):
            return None
        identity = change.identity
        if change.version <= delivered.get(identity, 0):
            return None  # not newer than what this stream already has
        delivered[identity] = change.version
        # One message per event, encoded once and shared by every stream that sends it.
        key = (database_id, kind.name, event.seq)
        message = self._messages.get(key)
        if message is None:
            message = kind.response(
                cursor=cursor.encode(database_id, event.seq),
                **{kind.changed_field: kind.to_proto(change)},
            ).SerializeToString()
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
