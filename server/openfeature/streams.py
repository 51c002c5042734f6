"""Open OpenFeature streams (EventStream, SyncFlags) and how they end at shutdown.

Like WatchFlags, a stream open when the server stops ends with UNAVAILABLE, so providers
reconnect (to another replica) at once instead of waiting for a broken connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from domain.errors import Unavailable


def shutting_down() -> Unavailable:
    return Unavailable("the server is shutting down; reconnect", reason="SHUTTING_DOWN")


def stream_lost() -> Unavailable:
    return Unavailable(
        "this server lost its place in the change stream; reconnect", reason="STREAM_RESTARTED"
    )


class Streams:
    def __init__(self) -> None:
        self.closing = False
        self._wakes: set[asyncio.Event] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def open(self, wake: asyncio.Event) -> Iterator[None]:
        """Registers a stream's wake-up event for as long as the stream runs."""
        if self.closing:
            raise shutting_down()
        self._wakes.add(wake)
        self._idle.clear()
        try:
            yield
        finally:
            self._wakes.discard(wake)
            if not self._wakes:
                self._idle.set()

    async def wait(self, wake: asyncio.Event, timeout: float | None) -> bool:
        """True once ``wake`` is set, False after ``timeout``; UNAVAILABLE once closing."""
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()
        if self.closing:
            raise shutting_down()
        if wake.is_set():
            wake.clear()
            return True
        return False

    async def close(self, timeout: float) -> None:
        """Ends every open stream with UNAVAILABLE; waits up to ``timeout`` for them."""
        self.closing = True
        for wake in list(self._wakes):
            wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
