"""LISTEN for the stream's wake-up hint, on a connection of its own outside the pool.

The sequencer sends one NOTIFY per sequenced batch (storage/stream.py); a process's tail
listens here so it reads new events at once instead of at its next poll. The hint is only
a hint: a lost notification or a dropped connection delays reading by one poll at most.
Driver errors leave this module as domain errors (Unavailable), like everywhere else in
storage/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
from psycopg import sql

from storage.db import PoolSettings, connect_direct, translate
from storage.stream import NOTIFY_CHANNEL


class Notifications:
    """One LISTEN connection: ``async for _ in listen()`` wakes once per notification."""

    def __init__(self, settings: PoolSettings, channel: str = NOTIFY_CHANNEL) -> None:
        self.settings = settings
        self.channel = channel
        # The connection's backend pid while connected (tests terminate it to prove recovery).
        self.backend_pid: int | None = None

    async def listen(self) -> AsyncIterator[None]:
        """Connects and listens; yields once at once, then once per notification.

        The first wake-up covers whatever was sent while nobody listened. Raises
        Unavailable when the connection cannot be made or is lost; the caller reconnects.
        """
        try:
            conn = await connect_direct(self.settings, application_name="platform-admin-listen")
        except psycopg.Error as exc:
            raise translate(exc) from None
        try:
            async with conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.backend_pid = conn.info.backend_pid
                yield
                async for _ in conn.notifies():
                    yield
        except psycopg.Error as exc:
            raise translate(exc) from None
        finally:
            self.backend_pid = None
