"""The change feed: the one way to consume the change stream in this process.

Every consumer (the in-memory read model, WatchFlags/WatchConfigs, and whatever comes
next: a bus relay, OpenFeature streams, a console's live view) calls
:meth:`ChangeFeed.subscribe` and iterates. The subscription owns the protocol that makes
a stream exact: read from the database up to near the head, attach to the process's tail
and read the small gap up to the tail's head meanwhile buffering, skip what was already
delivered, fall back to the database when the bounded queue overflows, and say so when the
stream cannot continue. Consumers only say what they do with an event.

What a subscription yields, in this order of the stream:

* :class:`storage.stream.Snapshot` first, with ``after=SNAPSHOT`` (the current rows, as
  events, and the head seq of the same view; the events that follow come after it);
* :class:`domain.events.ChangeEvent` values, in seq order, each exactly once, only of the
  ``subjects`` asked for and only those ``accept`` keeps;
* :class:`Live` each time it has caught up and follows the tail (first time, and again
  after lagging);
* :class:`Idle` when nothing was yielded for ``idle_s`` while following: every event up
  to ``position`` was delivered (a watch stream's heartbeat cursor);
* :class:`Lagging` when its queue overflowed (more than ``queue_limit`` events waiting):
  the queue was dropped and the subscription reads from the database again, transparently;
  ``on_lagging`` is also called at once, from the fan-out, for consumers stuck in a write;
* :class:`Expired`, last: the events after its position are gone (pruned by retention, or
  lost by this process's tail). ``error`` says which; resync from a snapshot.

A database error while reading raises the domain error (Unavailable, ...) from the
iteration; the consumer retries from its last position. Usage::

    async for item in feed.subscribe(after=position, subjects=[events.FLAG_CHANGED]):
        match item:
            case ChangeEvent(seq=seq, change=FlagChanged() as flag):
                publish(seq, flag)
            case Expired(error=error):
                raise error

While it waits a subscription holds no pooled connection; the fan-out appends to its queue
synchronously from the tail, so nobody waits for a slow consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from domain import events
from domain.errors import DomainError, Unavailable
from domain.events import ChangeEvent
from server.changes.tail import Tail
from storage import stream
from storage.db import Database
from storage.stream import CursorExpired, Snapshot

QUEUE_LIMIT = 1000
CATCH_UP_PAGE = 500


class Start(Enum):
    SNAPSHOT = "snapshot"  # the current rows first, then every change after them
    NOW = "now"  # only changes sequenced from now on


SNAPSHOT = Start.SNAPSHOT
NOW = Start.NOW


@dataclass(frozen=True, slots=True)
class _At:
    position: int  # every event up to this seq was delivered (or filtered out)


class Live(_At):
    """Caught up with the tail, which delivers from here on."""

    __slots__ = ()


class Idle(_At):
    """Nothing new for ``idle_s`` while following."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Lagging:
    """The queue overflowed; the subscription re-reads from the database (nothing is lost)."""

    dropped: int


@dataclass(frozen=True, slots=True)
class Expired:
    """The events after ``position`` can no longer be delivered; the subscription ends."""

    position: int
    error: DomainError


Item = ChangeEvent | Snapshot[Any] | Live | Idle | Lagging | Expired
Accept = Callable[[ChangeEvent], bool]
SnapshotLoader = Callable[[], Awaitable[Snapshot[Any]]]


class ChangeFeed:
    """One per process: the registry of subscriptions, fed by the process's tail."""

    def __init__(self, db: Database, tail: Tail) -> None:
        self.db = db
        self.tail = tail
        # Following subscriptions by their subject set: a batch is split once per set.
        self._following: dict[frozenset[str], set[Subscription]] = {}
        tail.add_listener(self._on_events)
        tail.add_gap_listener(self._on_gap)

    @property
    def head_seq(self) -> int:
        """The highest seq handed to subscriptions so far (-1 before the tail started)."""
        return self.tail.head_seq

    @property
    def ready(self) -> asyncio.Event:
        return self.tail.ready

    @property
    def caught_up_at(self) -> float | None:
        """Wall-clock time of the tail's last read that reached the head."""
        return self.tail.caught_up_at

    def wake(self) -> None:
        """Read the stream now (a local write was just sequenced)."""
        self.tail.wake()

    def subscribe(
        self,
        after: int | Start,
        *,
        subjects: Collection[str] | None = None,
        accept: Accept | None = None,
        queue_limit: int | None = QUEUE_LIMIT,
        idle_s: float | None = None,
        snapshot: SnapshotLoader | None = None,
        on_lagging: Callable[[Subscription], None] | None = None,
    ) -> Subscription:
        """A subscription to the events after ``after`` (a seq, SNAPSHOT or NOW).

        ``subjects``: which events (default every subject); ``accept``: a finer filter,
        applied before queueing; ``queue_limit``: events buffered before the subscription
        falls back to the database (None: unbounded, for in-process state that must not
        lag); ``snapshot``: the loader for ``after=SNAPSHOT``.
        """
        if after is SNAPSHOT and snapshot is None:
            raise ValueError("after=SNAPSHOT needs a snapshot loader")
        return Subscription(
            self,
            after,
            frozenset(events.SUBJECTS if subjects is None else subjects),
            accept,
            queue_limit,
            idle_s,
            snapshot,
            on_lagging,
        )

    # -- fan-out (called by the tail, synchronously, in seq order) ----------------------

    def _on_events(self, batch: list[ChangeEvent]) -> None:
        for subjects, subscriptions in self._following.items():
            if not subscriptions:
                continue
            wanted = [e for e in batch if e.subject in subjects]
            if not wanted:
                continue
            for sub in list(subscriptions):
                sub._offer(wanted)

    def _on_gap(self) -> None:
        """The tail lost events: no following subscription can continue."""
        error = Unavailable(
            "this server fell behind the change stream; resume with the last cursor received",
            reason="STREAM_RESTARTED",
        )
        for subscriptions in list(self._following.values()):
            for sub in list(subscriptions):
                sub._expire(error)

    def _attach(self, sub: Subscription) -> int:
        """Starts live delivery; returns the head from which the queue is filled.

        One synchronous step: the queue gets every batch after the returned head and
        nothing up to it, so the gap up to it is the subscription's own to read.
        """
        self._following.setdefault(sub.subjects, set()).add(sub)
        return self.tail.head_seq

    def _detach(self, sub: Subscription) -> None:
        following = self._following.get(sub.subjects)
        if following is not None:
            following.discard(sub)

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions that receive live events now (operators' and tests' view)."""
        return [sub for subs in self._following.values() for sub in subs]


class Subscription:
    """One consumer's position in the stream; iterate it once."""

    def __init__(
        self,
        feed: ChangeFeed,
        after: int | Start,
        subjects: frozenset[str],
        accept: Accept | None,
        queue_limit: int | None,
        idle_s: float | None,
        snapshot: SnapshotLoader | None,
        on_lagging: Callable[[Subscription], None] | None,
    ) -> None:
        self.feed = feed
        self.after = after
        self.subjects = subjects
        self.accept = accept
        self.queue_limit = queue_limit
        self.idle_s = idle_s
        self.snapshot = snapshot
        self.on_lagging = on_lagging
        # Every event up to this seq was delivered (or filtered out); -1 before starting.
        self.position = -1
        # Pages read and items handled: a consumer stuck in a write makes none.
        self.progress = 0
        self.queue: deque[ChangeEvent] = deque()
        self.attached = False
        # Events dropped at the last overflow (0 while not lagging).
        self.dropped = 0
        self._expired: DomainError | None = None
        self._closed = False
        self._wake = asyncio.Event()
        self._items: AsyncGenerator[Item] | None = None
        # While following: when the last item was yielded, and the timer that wakes the
        # subscription to say Idle (armed lazily: not once per delivery).
        self._last = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Ends the iteration at its next step (and stops live delivery now)."""
        self._closed = True
        self._leave()

    # -- called by the feed -------------------------------------------------------------

    def _offer(self, batch: list[ChangeEvent]) -> None:
        wanted = batch if self.accept is None else [e for e in batch if self.accept(e)]
        if not wanted:
            return
        if self.queue_limit is not None and len(self.queue) + len(wanted) > self.queue_limit:
            self.dropped = len(self.queue) + len(wanted)
            self._leave()
            if self.on_lagging is not None:
                self.on_lagging(self)
            return
        self.queue.extend(wanted)
        self._wake.set()

    def _expire(self, error: DomainError) -> None:
        if self._expired is None:
            self._expired = error
        self._leave()

    def _leave(self) -> None:
        self.attached = False
        self.queue.clear()
        self.feed._detach(self)
        self._wake.set()

    # -- the protocol -------------------------------------------------------------------

    def __aiter__(self) -> AsyncGenerator[Item]:
        # The generator itself, not a wrapper around it: every layer costs each delivery.
        if self._items is None:
            self._items = self._run()
        return self._items

    async def __anext__(self) -> Item:
        return await anext(aiter(self))

    async def _run(self) -> AsyncGenerator[Item]:
        await self.feed.ready.wait()
        if self.after is SNAPSHOT:
            assert self.snapshot is not None
            snap = await self.snapshot()
            self.position = snap.head_seq
            yield snap
        elif isinstance(self.after, int):
            self.position = self.after
        else:  # NOW
            self.position = max(self.feed.head_seq, 0)
        try:
            while not self._closed:
                # Catch up from the database until a short page: near the head.
                try:
                    async for event in self._read(upto=None):
                        yield event
                    if self._closed:
                        return
                    # Attach, then read the gap up to the head the queue starts after.
                    self.queue.clear()
                    self.dropped = 0
                    self.attached = True
                    live_from = self.feed._attach(self)
                    async for event in self._read(upto=live_from):
                        yield event
                except CursorExpired as exc:
                    yield Expired(self.position, exc)
                    return
                self.position = max(self.position, live_from)
                if self._expired is None and self.attached:
                    yield Live(self.position)
                self._last = time.monotonic()
                while (item := await self._next_live()) is not None:
                    yield item
                if self._expired is not None:
                    yield Expired(self.position, self._expired)
                    return
                if self.dropped:
                    yield Lagging(self.dropped)
        finally:
            self._leave()
            if self._idle_timer is not None:
                self._idle_timer.cancel()

    async def _read(self, upto: int | None) -> AsyncIterator[ChangeEvent]:
        """Events after ``position`` (up to ``upto``) from the database, page by page."""
        while not self._closed and (upto is None or self.position < upto):
            page = await stream.read_after(
                self.feed.db, self.position, CATCH_UP_PAGE, upto=upto, subjects=self.subjects
            )
            self.progress += 1
            for event in page:
                self.position = event.seq
                self.progress += 1
                if self.accept is None or self.accept(event):
                    yield event
            if len(page) < CATCH_UP_PAGE:
                return

    async def _next_live(self) -> ChangeEvent | Idle | None:
        """The next live event from the queue, or Idle after ``idle_s`` without one; None
        once following ends (the queue overflowed, the stream expired or it was closed).

        A coroutine rather than a generator, and no timer armed per wait: this runs once
        per delivery on every stream.
        """
        queue = self.queue
        while self.attached and not self._closed:
            if queue:
                event = queue.popleft()
                self.progress += 1
                if event.seq <= self.position:
                    continue  # already read from the database
                self.position = event.seq
                self._last = time.monotonic()
                return event
            if self.idle_s is not None:
                now = time.monotonic()
                due = self._last + self.idle_s
                if now >= due:
                    # The queue is empty: every event up to the tail's head was handled.
                    self.position = max(self.position, self.feed.head_seq)
                    self._last = now
                    return Idle(self.position)
                if self._idle_timer is None:
                    # Fires at the earliest due time; a delivery meanwhile moves it later,
                    # and the wake-up then only re-arms it.
                    self._idle_timer = asyncio.get_running_loop().call_later(
                        due - now, self._idle_due
                    )
            self._wake.clear()
            await self._wake.wait()
        return None

    def _idle_due(self) -> None:
        self._idle_timer = None
        self._wake.set()
