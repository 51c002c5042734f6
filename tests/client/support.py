"""Client-library test helpers: a client on the test server, polling, changes recorded."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from platform_admin_client import Change, Client

HEARTBEAT_S = 1.0  # the test servers' watch heartbeat (settings fixture below)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    """Polls ``check`` (without blocking the loop the server runs on) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        last: Any = None
        try:
            if check():
                return
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}: {last}")
        await asyncio.sleep(0.05)


@dataclass
class Recorder:
    """Every change a listener was given, in order, from the client's thread."""

    changes: list[Change] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, change: Change) -> None:
        with self.lock:
            self.changes.append(change)

    def __repr__(self) -> str:
        return f"Recorder({len(self.changes)} changes)"

    def versions(self, kind: str = "flag") -> list[tuple[str, int]]:
        with self.lock:
            return [
                (c.key, c.state.version if c.state else 0) for c in self.changes if c.kind == kind
            ]


@contextlib.asynccontextmanager
async def client_for(*ports: int, **options: Any) -> AsyncIterator[Client]:
    options.setdefault("heartbeat_interval_s", HEARTBEAT_S)
    options.setdefault("reconnect_max_s", 0.5)
    targets = [f"127.0.0.1:{p}" for p in ports]
    client = await asyncio.to_thread(Client, targets if len(targets) > 1 else targets[0], **options)
    try:
        yield client
    finally:
        await client.aclose()
