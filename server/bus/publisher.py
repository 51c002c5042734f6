"""Pipelined JetStream publishes, each with a future for its PubAck or its error.

nats-py's ``publish_async`` loses JetStream's error replies (its reply handler raises
instead of failing the future, which then only times out), so the relay could neither
tell *why* a row was refused nor stop waiting at once. This does what ``js.publish``
does, through nats-py's own request/reply primitives, for many messages in flight: one
reply subscription per connection, one future per message, resolved with the decoded
PubAck or failed with :class:`PublishRefused`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS_HEADER = "Status"
NO_RESPONDERS = "503"


class PublishRefused(Exception):
    """JetStream answered a publish with an error (or nobody answered)."""

    def __init__(self, description: str, code: int | None = None) -> None:
        super().__init__(description if code is None else f"{description} (error {code})")
        self.code = code


class Publisher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox()
        self._counter = itertools.count()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscription: Subscription | None = None

    async def _ensure_subscribed(self) -> None:
        if self._subscription is None:
            self._subscription = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject, None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS:
            future.set_exception(PublishRefused("no stream accepts this subject"))
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            future.set_exception(PublishRefused("unreadable PubAck"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None:
            future.set_exception(
                PublishRefused(str(error.get("description", "refused")), error.get("err_code"))
            )
            return
        future.set_result(answer)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, Any]]:
        """Sends one message; the future gets its PubAck (a dict: stream, seq, duplicate)."""
        await self._ensure_subscribed()
        token = f"{self._prefix}.{next(self._counter)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._pending.pop(token, None))
        self._pending[token] = future
        await self.nc.publish(subject, body, reply=token, headers=headers)
        return future
