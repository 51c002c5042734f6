"""What changed, in OpenFeature terms: the one place OpenFeature reads the change stream.

EventStream (evaluation.py) and SyncFlags (sync.py) need only "these keys changed,
this way" after the read model has applied the change. :class:`ChangeFeed` turns the
change stream's batches into :class:`KeyChange` lists for its subscribers; when the
change engine's API moves, only this module follows it.

Subscribers are called synchronously on the event loop and must not block: they record
what changed and wake their stream, which reads the read model later in its own task
(by then every listener of the batch, the read model included, has run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.openfeature.answers import CONFIG_PREFIX
from storage import outbox
from storage.stream import ChangeEvent

WRITE, UPDATE, DELETE = "write", "update", "delete"


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One flag or ``config:`` key that changed: "write" (new), "update" or "delete"."""

    key: str
    type: str
    is_config: bool


Subscriber = Callable[[list[KeyChange]], None]


def key_change(event: ChangeEvent) -> KeyChange | None:
    payload = event.payload
    if event.subject == outbox.FLAG_CHANGED:
        if payload.get("archived"):
            kind = DELETE  # gone for evaluation: providers fall back to the code default
        elif int(payload.get("version", 0)) == 1:
            kind = WRITE
        else:
            kind = UPDATE
        return KeyChange(str(payload["key"]), kind, is_config=False)
    if event.subject == outbox.CONFIG_CHANGED:
        # The `config:` key always exists (it has a default); a row only changes its value.
        return KeyChange(CONFIG_PREFIX + str(payload["key"]), UPDATE, is_config=True)
    return None


class ChangeFeed:
    def __init__(self, tail: Any) -> None:
        self.tail = tail
        self._subscribers: list[Subscriber] = []
        self._attached = False
        # Bumped once per batch with a flag or config change: cached renderings key on it.
        self.generation = 0

    def start(self) -> None:
        if not self._attached:
            self.tail.add_listener(self._on_events)
            self._attached = True

    def stop(self) -> None:
        if self._attached:
            self.tail.remove_listener(self._on_events)
            self._attached = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Adds ``subscriber``; returns the function that removes it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _on_events(self, events: list[ChangeEvent]) -> None:
        changes = [c for c in map(key_change, events) if c is not None]
        if not changes:
            return
        self.generation += 1
        for subscriber in list(self._subscribers):
            subscriber(changes)
