"""The background thread that owns the client's event loop.

Synchronous programs (Flask, Django, scripts) have no loop to run the streams on, and an
asyncio program's loop should not pay for them either: the streams, the watchdog and the
heartbeats run on this thread's loop, and the in-process answers read the local copy
from whatever thread calls them. Several clients may share one LoopThread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

DRAIN_S = 0.2


class LoopThread:
    def __init__(self, name: str = "platform-admin-client") -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Runs ``fn`` on the loop thread and returns its result (runs it here if on it)."""
        if self.on_loop_thread() or not self.alive:
            return fn()

        async def run() -> T:
            return fn()

        return self.submit(run()).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops and closes the loop, once gRPC has delivered the last completions of the
        calls it ran (another thread's loop would otherwise hand them to a closed one)."""
        if self.alive and not self.on_loop_thread():
            with contextlib.suppress(Exception):
                self.submit(asyncio.sleep(DRAIN_S)).result(timeout)
        if self.alive:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.on_loop_thread():
            self._thread.join(timeout)
