"""The client's loop-side half: the two streams feed the local copy, the state follows.

Everything here runs on the client's loop thread; the only things other threads touch
are the local copy's tables (read-only, swapped whole) and the listener lists (appended).
Listeners are called on the loop thread, one change at a time, in the order the changes
were applied; a change the copy already held (same or older version, as after a
reconnect that replays the overlap) is not delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from domain.config_keys import ConfigKeySpec
from domain.read_state import ConfigState, FlagState
from platform_admin_client.connection import Connection
from platform_admin_client.errors import ServerError
from platform_admin_client.health import Heartbeats
from platform_admin_client.state import State
from platform_admin_client.store import (
    Change,
    ConfigTable,
    FlagTable,
    LocalCopy,
    config_differences,
    flag_differences,
)
from platform_admin_client.watch import CONFIGS, FLAGS, Backoff, Stream

log = logging.getLogger("platform_admin_client")

Listener = Callable[[Change], object]
StateListener = Callable[[State], object]


class Core:
    def __init__(
        self,
        copy: LocalCopy,
        connection: Connection,
        *,
        heartbeat_interval_s: float,
        deadline_s: float,
        backoff: Backoff,
    ) -> None:
        self.copy = copy
        self.connection = connection
        self.stale_after_s = 2 * heartbeat_interval_s
        self.deadline_s = deadline_s
        self.state = State.STALE
        self.ready_event = threading.Event()
        self.streams = {
            name: Stream(name, connection, self, backoff, deadline_s) for name in (FLAGS, CONFIGS)
        }
        self.heartbeats: dict[str, Heartbeats] = {}
        self._live = {FLAGS: False, CONFIGS: False}
        self._last = {FLAGS: 0.0, CONFIGS: 0.0}
        self._errors: dict[str, ServerError] = {}
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._state_listeners: list[StateListener] = []
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(s.run()) for s in self.streams.values()]
        self._tasks.append(asyncio.create_task(self._watchdog()))

    async def stop(self) -> None:
        tasks = self._tasks + [h.task for h in self.heartbeats.values() if h.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.connection.close()

    async def _watchdog(self) -> None:
        period = min(1.0, self.stale_after_s / 4)
        while True:
            await asyncio.sleep(period)
            self._recompute()

    # --- listeners ------------------------------------------------------------------------

    def add_listener(self, callback: Listener, keys: Collection[str] | None) -> None:
        self._listeners.append((callback, frozenset(keys) if keys is not None else None))

    def add_state_listener(self, callback: StateListener) -> None:
        self._state_listeners.append(callback)

    def remove_state_listener(self, callback: StateListener) -> None:
        with contextlib.suppress(ValueError):
            self._state_listeners.remove(callback)

    def _deliver(self, changes: list[Change]) -> None:
        listeners = tuple(self._listeners)
        for change in changes:
            for callback, keys in listeners:
                if keys is not None and change.key not in keys:
                    continue
                try:
                    callback(change)
                except Exception:
                    log.exception("on_change listener failed for %s", change.key)

    # --- state ----------------------------------------------------------------------------

    @property
    def error(self) -> ServerError | None:
        return next(iter(self._errors.values()), None)

    def _recompute(self) -> None:
        now = time.monotonic()
        if self._errors:
            new = State.ERROR
        elif all(self._live[s] and now - self._last[s] <= self.stale_after_s for s in self._live):
            new = State.READY
        else:
            new = State.STALE
        if new is self.state:
            return
        self.state = new
        if new is State.READY:
            self.ready_event.set()
        else:
            self.ready_event.clear()
        log.info("platform-admin client is %s", new)
        for callback in tuple(self._state_listeners):
            try:
                callback(new)
            except Exception:
                log.exception("state listener failed")

    def _seen(self, stream: str) -> None:
        self._live[stream] = True
        self._last[stream] = time.monotonic()
        self._errors.pop(stream, None)
        self._recompute()

    # --- Sink: what the streams call ------------------------------------------------------

    def cursor(self, stream: str) -> str:
        return self.copy.flags_cursor if stream == FLAGS else self.copy.configs_cursor

    def forget_cursor(self, stream: str) -> None:
        if stream == FLAGS:
            self.copy.flags_cursor = ""
        else:
            self.copy.configs_cursor = ""

    def set_specs(self, specs: dict[str, ConfigKeySpec]) -> None:
        if specs != self.copy.specs:
            self.copy.specs = specs

    def swap(self, stream: str, states: list[Any], cursor: str) -> None:
        """A complete snapshot: built aside, swapped in whole, differences delivered."""
        copy = self.copy
        changes: list[Change]
        if stream == FLAGS:
            flags = FlagTable(states)
            changes = flag_differences(copy.flags, flags) if copy.flags_loaded else []
            copy.flags, copy.flags_cursor, copy.flags_loaded = flags, cursor, True
        else:
            configs = ConfigTable(states)
            changes = config_differences(copy.configs, configs) if copy.configs_loaded else []
            copy.configs, copy.configs_cursor, copy.configs_loaded = configs, cursor, True
        changes = [Change(c.kind, c.key, c.state, cursor) for c in changes]
        self._seen(stream)
        self._deliver(changes)

    def apply(self, stream: str, state: FlagState | ConfigState, cursor: str) -> None:
        if isinstance(state, FlagState):
            applied = self.copy.flags.apply(state)
            self.copy.flags_cursor = cursor
        else:
            applied = self.copy.configs.apply(state)
            self.copy.configs_cursor = cursor
        self._seen(stream)
        if applied:
            self._deliver(
                [Change("flag" if stream == FLAGS else "config", state.key, state, cursor)]
            )

    def heartbeat(self, stream: str, cursor: str) -> None:
        if cursor:
            if stream == FLAGS:
                self.copy.flags_cursor = cursor
            else:
                self.copy.configs_cursor = cursor
        self._seen(stream)

    def disconnected(self, stream: str) -> None:
        self._live[stream] = False
        self._recompute()

    def refused(self, stream: str, error: ServerError) -> None:
        self._live[stream] = False
        self._errors[stream] = error
        self._recompute()

    # --- heartbeats for HealthService ------------------------------------------------------

    def report_heartbeats(self, service_id: str, every_s: float) -> Heartbeats:
        old = self.heartbeats.pop(service_id, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        beats = Heartbeats(self.connection, service_id, every_s, self.deadline_s)
        beats.task = asyncio.create_task(beats.run())
        self.heartbeats[service_id] = beats
        return beats
