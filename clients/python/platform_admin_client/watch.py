"""One watch stream kept open: connect, snapshot or resume by cursor, apply, reconnect.

Both streams follow the contract of ``protos/platform_admin/v1/{flag,config}.proto``:

* without a cursor the server sends a snapshot, then ``snapshot_end`` (with the cursor),
  then changes. The snapshot is collected aside and swapped in whole at ``snapshot_end``,
  so a resync never shows a half-loaded state;
* with a cursor it sends exactly the changes after it; heartbeats carry the head cursor;
* ``OUT_OF_RANGE`` / ``CURSOR_EXPIRED``: the cursor is older than retention (or from
  another database): resync from a snapshot at once;
* ``RESOURCE_EXHAUSTED`` / ``SUBSCRIBER_TOO_SLOW``: resume by cursor at once;
* ``UNAVAILABLE`` (``SERVER_SHUTTING_DOWN``, connection lost): next replica, back-off;
* ``UNAUTHENTICATED`` / ``PERMISSION_DENIED``: ERROR, and a slow retry (a token that was
  refused is refused again; retrying fast would only load the server).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc

from domain.config_keys import ConfigKeySpec
from domain.read_state import ConfigState, FlagState
from platform_admin_client import convert
from platform_admin_client.connection import Connection
from platform_admin_client.errors import ServerError, server_error

log = logging.getLogger("platform_admin_client")

FLAGS = "flags"
CONFIGS = "configs"

_REFUSED = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


class Sink(Protocol):
    """What a stream feeds (the client's core); every method runs on the loop thread."""

    def cursor(self, stream: str) -> str: ...
    def set_specs(self, specs: dict[str, ConfigKeySpec]) -> None: ...
    def swap(self, stream: str, states: list[Any], cursor: str) -> None: ...
    def apply(self, stream: str, state: FlagState | ConfigState, cursor: str) -> None: ...
    def heartbeat(self, stream: str, cursor: str) -> None: ...
    def forget_cursor(self, stream: str) -> None: ...
    def disconnected(self, stream: str) -> None: ...
    def refused(self, stream: str, error: ServerError) -> None: ...


@dataclass
class Backoff:
    """Reconnect delays: exponential with jitter, reset by a message received."""

    initial_s: float = 0.1
    max_s: float = 5.0
    refused_s: float = 30.0


class Stream:
    """The loop of one stream (flags or configs); :meth:`run` returns only when cancelled."""

    def __init__(
        self,
        name: str,
        connection: Connection,
        sink: Sink,
        backoff: Backoff,
        deadline_s: float,
    ) -> None:
        self.name = name
        self.connection = connection
        self.sink = sink
        self.backoff = backoff
        self.deadline_s = deadline_s
        self.failures = 0
        self.attempts = 0  # connection attempts, for tests and logs

    async def run(self) -> None:
        while True:
            delay = await self._attempt()
            self.sink.disconnected(self.name)
            if delay > 0:
                await asyncio.sleep(delay)

    async def _attempt(self) -> float:
        """One connection until it fails; the delay before the next one."""
        self.attempts += 1
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            return self._after(server_error(exc))
        except Exception:
            log.exception("platform-admin %s stream failed", self.name)
            self.failures += 1
            return self._growing()
        # The server ended the stream without a status error: reconnect by cursor.
        return 0.0

    def _after(self, error: ServerError) -> float:
        code, reason = error.code, error.reason
        if code is grpc.StatusCode.OUT_OF_RANGE or (
            code is grpc.StatusCode.INVALID_ARGUMENT and self.sink.cursor(self.name)
        ):
            # CURSOR_EXPIRED, or a cursor this server never issued: start from a snapshot.
            log.info("platform-admin %s cursor refused (%s): resyncing", self.name, reason)
            self.sink.forget_cursor(self.name)
            self.failures += 1
            return 0.0 if self.failures <= 1 else self._growing()
        if code in _REFUSED:
            log.error("platform-admin refused the %s stream: %s", self.name, error)
            self.sink.refused(self.name, error)
            return self.backoff.refused_s
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            log.warning("platform-admin %s stream: %s; resuming", self.name, error)
            self.failures += 1
            return 0.05 if self.failures <= 1 else self._growing()
        log.warning(
            "platform-admin %s stream lost (%s): %s", self.name, self.connection.target, error
        )
        self.connection.rotate()
        self.failures += 1
        if reason == "SERVER_SHUTTING_DOWN" and self.failures <= 1:
            return 0.0
        return self._growing()

    def _growing(self) -> float:
        ceiling = min(self.backoff.max_s, self.backoff.initial_s * 2.0 ** (self.failures - 1))
        return float(ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not security

    async def _follow(self) -> None:
        channel = self.connection.channel()
        metadata = await self.connection.metadata()
        cursor = self.sink.cursor(self.name)
        call: Any
        if self.name == FLAGS:
            call = flag_pb2_grpc.FlagServiceStub(channel).WatchFlags(
                flag_pb2.WatchFlagsRequest(cursor=cursor), metadata=metadata
            )
        else:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            keys = await stub.ListConfigKeys(
                config_pb2.ListConfigKeysRequest(), metadata=metadata, timeout=self.deadline_s
            )
            specs = {}
            for key in keys.keys:
                spec = convert.key_spec(key)
                if spec is not None:
                    specs[spec.key] = spec
            self.sink.set_specs(specs)
            call = stub.WatchConfigs(
                config_pb2.WatchConfigsRequest(cursor=cursor), metadata=metadata
            )
        try:
            await self._read(call, resumed=bool(cursor))
        finally:
            call.cancel()

    async def _read(self, call: Any, resumed: bool) -> None:
        building: list[Any] | None = None if resumed else []
        changed_field = "flag_changed" if self.name == FLAGS else "config_changed"
        to_state: Any = convert.flag_state if self.name == FLAGS else convert.config_state
        async for message in call:
            self.failures = 0
            event = message.WhichOneof("event")
            if event == "snapshot":
                if building is None:
                    building = []
                state = to_state(message.snapshot)
                if state is not None:
                    building.append(state)
            elif event == "snapshot_end":
                self.sink.swap(self.name, building or [], message.cursor)
                building = None
            elif event == changed_field:
                state = to_state(getattr(message, changed_field))
                if state is not None:
                    self.sink.apply(self.name, state, message.cursor)
            elif event == "heartbeat":
                self.sink.heartbeat(self.name, message.cursor)
