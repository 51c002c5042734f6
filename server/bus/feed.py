"""What wakes the relay: the change engine's notice that new changes were sequenced.

The relay reads its rows from the outbox table (``published_at IS NULL``, in seq order),
so it needs from the change engine only a signal, never the events themselves. This class
is the one place that knows the engine's API: today the per-process tail's listeners
(server/changes/tail.py); nothing else in server/bus/ imports the engine.
"""

from __future__ import annotations

import asyncio

from server.changes.tail import Tail
from storage.stream import ChangeEvent


class ChangeSignal:
    """An event set whenever the change engine hands out newly sequenced changes."""

    def __init__(self, tail: Tail) -> None:
        self._tail = tail
        self.event = asyncio.Event()

    def _on_changes(self, events: list[ChangeEvent]) -> None:
        self.event.set()

    def start(self) -> None:
        self._tail.add_listener(self._on_changes)

    def stop(self) -> None:
        self._tail.remove_listener(self._on_changes)
