"""One process's part of the bus: its NATS connection, the relay and the inbox consumer.

The App runs :meth:`Bus.run` as a background job when PLATFORM_ADMIN_NATS_URL is not
``off``. The connection is retried with back-off until it succeeds (a bus that is down
at start delays publishing, never serving); nats-py reconnects by itself after that. The
connection's state reaches ``grpc.health.v1`` under its own service name through
``on_health``, never the server's overall status: the RPCs work while the bus is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from server.bus.connection import connect
from server.bus.inbox import Inbox
from server.bus.relay import Relay
from server.bus.wakeup import ChangeSignal
from server.settings import Settings
from storage.db import Database, PoolSettings
from storage.relay import RelaySession

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 0.5
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0


class Bus:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        pool_settings: PoolSettings,
        signal: ChangeSignal,
        on_health: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.signal = signal
        self.on_health = on_health
        self.nc: Client | None = None
        self.relay = Relay(RelaySession(pool_settings), settings, signal.event, self._client)
        self.inbox = Inbox(db, settings, self._client)
        self._connected: bool | None = None

    def _client(self) -> Client | None:
        return self.nc

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _report(self) -> None:
        connected = self.connected
        if connected != self._connected:
            self._connected = connected
            if connected:
                log.info("NATS connected: %s SERVING", self.settings.nats_urls[0])
            elif self.nc is not None:
                log.warning("NATS disconnected: relay paused, reconnecting")
            await self.on_health(connected)

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self.signal.run(), name="bus-wakeup"),
        ]
        try:
            await self._report()
            await self._connect()
            tasks += [
                asyncio.create_task(self.relay.run(), name="bus-relay"),
                asyncio.create_task(self.inbox.run(), name="bus-inbox"),
            ]
            while True:
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise RuntimeError("bus task ended") from task.exception()
                await self._report()
                await asyncio.sleep(HEALTH_CHECK_S)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            nc, self.nc = self.nc, None
            if nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), timeout=2)

    async def _connect(self) -> None:
        delay = _BACKOFF_START_S
        name = f"platform-admin-{os.getpid()}"
        while True:
            try:
                self.nc = await connect(self.settings, name, on_change=self._report)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "NATS unreachable at %s (retry in %.1fs): %s",
                    ",".join(self.settings.nats_urls),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
