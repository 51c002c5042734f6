"""The per-process tail of the change stream, and the sequencer loop.

One :class:`Tail` per process reads ``seq > last`` once per wake-up and hands each batch,
in seq order, to its listeners: in practice one, the change feed (server/changes/feed.py),
whose ``subscribe()`` every consumer uses. It wakes on the sequencer's NOTIFY, received on
a LISTEN connection of its own outside the pool (storage/notify.py), and polls every
``poll_interval_s`` anyway: a dropped LISTEN connection (reconnected with back-off) or a
lost notification delays delivery by at most one poll.

:class:`Sequencer` runs on every replica; the advisory lock in storage/stream.py lets only
one of them assign seqs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from domain.events import ChangeEvent
from storage import stream
from storage.db import Database, PoolSettings
from storage.notify import Notifications
from storage.stream import CursorExpired

log = logging.getLogger(__name__)

Listener = Callable[[list[ChangeEvent]], None]

POLL_INTERVAL_S = 0.25
SEQUENCER_INTERVAL_S = 0.01
SEQUENCER_IDLE_MAX_S = 0.05
# After sequencing something the sequencer keeps polling every interval_s this long: writes
# come in bursts, and rows committed by other processes (or by hand) are found at once.
SEQUENCER_BUSY_S = 2.0
READ_BATCH = 1000
_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0


@dataclass(eq=False)
class Tail:
    """Reads the stream once per process and fans each batch out to listeners.

    ``head_seq`` is the highest seq handed to listeners (-1 until the tail has read the
    head at start). Listeners are called synchronously, in seq order, with every batch
    read after they were added; a listener must not block (it runs on the event loop).
    """

    db: Database
    pool_settings: PoolSettings
    poll_interval_s: float = POLL_INTERVAL_S
    batch: int = READ_BATCH
    head_seq: int = field(default=-1, init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _listeners: list[Listener] = field(default_factory=list, init=False)
    _gap_listeners: list[Callable[[], None]] = field(default_factory=list, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _advanced: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    listen_connected: bool = field(default=False, init=False)
    # The LISTEN connection's backend pid (tests terminate it to prove recovery).
    listen_pid: int | None = field(default=None, init=False)
    reconnects: int = field(default=0, init=False)
    # Wall-clock time of the last read that reached the head (the read model's freshness).
    caught_up_at: float | None = field(default=None, init=False)

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def add_gap_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs when events were lost to this tail (pruned before it read
        them, after days without a successful read); the tail then restarts at the head.
        """
        self._gap_listeners.append(callback)

    async def wait_for(self, seq: int, timeout: float | None = None) -> None:
        """Returns once every event up to ``seq`` has been handed to the listeners.

        Raises TimeoutError after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while self.head_seq < seq:
                await self._advanced.wait()

    def wake(self) -> None:
        """Read now instead of at the next poll (e.g. right after a local write)."""
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="tail-listen")
        failing = False
        try:
            await self._prime()
            while True:
                try:
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                try:
                    reading_at = time.time()
                    await self._read_all()
                    self.caught_up_at = reading_at
                    if failing:
                        log.info("change stream readable again")
                    failing = False
                except CursorExpired:
                    await self._skip_to_head()
                except Exception as exc:
                    # Once per outage, not at every poll.
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "change stream read failed (retrying every poll): %s",
                        exc,
                    )
                    failing = True
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _prime(self) -> None:
        delay = _BACKOFF_START_S
        while True:
            try:
                head = await stream.head(self.db)
                break
            except Exception as exc:
                log.warning("change stream head unreadable (retrying): %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        self._advance(head, [])
        self.caught_up_at = time.time()
        self.ready.set()

    async def _skip_to_head(self) -> None:
        log.error(
            "change stream events after %d were pruned before this process read them;"
            " restarting at the head (open streams are ended and resume by cursor)",
            self.head_seq,
        )
        self._advance(await stream.head(self.db), [])
        for callback in list(self._gap_listeners):
            try:
                callback()
            except Exception:
                log.exception("change stream gap listener failed")

    async def _read_all(self) -> None:
        while True:
            events = await stream.read_after(self.db, self.head_seq, self.batch)
            if not events:
                return
            self._advance(events[-1].seq, events)
            if len(events) < self.batch:
                return

    def _advance(self, head: int, events: list[ChangeEvent]) -> None:
        # Synchronous on purpose: listeners get the batch and head_seq moves with no await
        # in between, so whoever reads head_seq and adds a listener in one step misses
        # nothing after that head and receives nothing up to it.
        for callback in list(self._listeners) if events else ():
            try:
                callback(events)
            except Exception:
                log.exception("change stream listener failed")
        self.head_seq = head
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def _listen(self) -> None:
        """Keeps a LISTEN connection open (outside the pool); each NOTIFY wakes the reader."""
        delay = _BACKOFF_START_S
        while True:
            notifications = Notifications(self.pool_settings)
            connected = False
            try:
                async for _ in notifications.listen():
                    if not connected:
                        connected = self.listen_connected = True
                        self.listen_pid = notifications.backend_pid
                        delay = _BACKOFF_START_S
                    # The first wake-up reads anything sequenced while disconnected.
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                what = "lost" if connected else "failed"
                log.warning("LISTEN connection %s (retry in %.1fs): %s", what, delay, exc)
            finally:
                self.listen_connected = False
                self.listen_pid = None
            if connected:
                self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)


class Sequencer:
    """Assigns seqs to committed outbox rows every ``interval_s`` (all replicas run one)."""

    def __init__(
        self, db: Database, interval_s: float = SEQUENCER_INTERVAL_S, batch: int = READ_BATCH
    ) -> None:
        self.db = db
        self.interval_s = interval_s
        self.batch = batch
        self.on_sequenced: Callable[[int], None] | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A transaction of this process committed: look for rows to sequence now."""
        self._wake.set()

    async def run(self) -> None:
        delay = _BACKOFF_START_S
        idle = 0.0
        busy_until = 0.0
        while True:
            try:
                top = await stream.sequence_batch(self.db, self.batch)
                delay = _BACKOFF_START_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sequencer failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            if top and self.on_sequenced is not None:
                # This process's tail need not wait for its own NOTIFY round trip.
                self.on_sequenced(top)
            if top:
                busy_until = time.monotonic() + SEQUENCER_BUSY_S
                continue
            # Quiet polls back off from interval_s to SEQUENCER_IDLE_MAX_S: each costs two
            # round trips, which at 100/s were most of an idle server's CPU. Writes of this
            # process wake it at once (Database.after_commit); rows written by another
            # process are that process's sequencer's to find, or this one's within the cap.
            if time.monotonic() < busy_until:
                # Busy: the fixed cadence batches the commits of this interval into one
                # sequencing transaction (a wake per commit would double the fsyncs).
                idle = self.interval_s
                await asyncio.sleep(idle)
                self._wake.clear()
                continue
            idle = min(idle * 2, SEQUENCER_IDLE_MAX_S) if idle else self.interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()
            self._wake.clear()
