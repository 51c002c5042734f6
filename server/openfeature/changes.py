"""What changed, in OpenFeature terms: the one place OpenFeature reads the change stream.

EventStream (evaluation.py) and SyncFlags (sync.py) need only "these keys changed,
this way", once the read model reflects the change. :class:`KeyChanges` subscribes to
the process's change feed (server/changes/feed.py) for each stream and hands its
subscriber :class:`KeyChange` values; when the feed's API moves, only this module does.

A subscriber is a plain callback: it records what changed and wakes its stream, which
then reads the read model. ``None`` means the stream cannot continue (events were lost
or the database failed while catching up): the stream ends with UNAVAILABLE and the
provider reconnects and starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from domain import events
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from server.changes.feed import NOW, ChangeFeed, Expired
from server.changes.read_model import ReadModel
from server.openfeature.answers import CONFIG_PREFIX

log = logging.getLogger(__name__)

WRITE, UPDATE, DELETE = "write", "update", "delete"
SUBJECTS = (events.FLAG_CHANGED, events.CONFIG_CHANGED)
# Events queued per stream before its subscription falls back to reading the database.
QUEUE_LIMIT = 1000
# How long a change may wait for the read model to reflect it (it applies each batch as
# soon as the tail hands it over; this only bounds a stuck model).
READ_MODEL_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One flag or ``config:`` key that changed: "write" (new), "update" or "delete"."""

    key: str
    type: str
    is_config: bool


Subscriber = Callable[[KeyChange | None], None]


def key_change(event: ChangeEvent) -> KeyChange | None:
    change = event.change
    if isinstance(change, FlagChanged):
        if change.archived:
            kind = DELETE  # gone for evaluation: providers fall back to the code default
        elif change.version == 1:
            kind = WRITE
        else:
            kind = UPDATE
        return KeyChange(change.key, kind, is_config=False)
    if isinstance(change, ConfigChanged):
        # The `config:` key always exists (it has a default); a row only changes its value.
        return KeyChange(CONFIG_PREFIX + change.key, UPDATE, is_config=True)
    return None


class KeyChanges:
    def __init__(self, feed: ChangeFeed, read_model: ReadModel) -> None:
        self.feed = feed
        self.read_model = read_model
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Starts following the stream from now for ``subscriber``; returns the stop function."""
        task = asyncio.create_task(self._follow(subscriber), name="openfeature-changes")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def stop() -> None:
            task.cancel()

        return stop

    async def _follow(self, subscriber: Subscriber) -> None:
        try:
            subscription = self.feed.subscribe(NOW, subjects=SUBJECTS, queue_limit=QUEUE_LIMIT)
            async for item in subscription:
                if isinstance(item, ChangeEvent):
                    change = key_change(item)
                    if change is not None:
                        await self._reflected(item.seq)
                        subscriber(change)
                elif isinstance(item, Expired):
                    subscriber(None)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("OpenFeature stream lost the change feed: %s", exc)
            subscriber(None)

    async def _reflected(self, seq: int) -> None:
        """Returns once the read model has applied ``seq`` (its own subscription may lag)."""
        if self.read_model.seq < seq:
            await self.read_model.wait_for(seq, READ_MODEL_WAIT_S)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
