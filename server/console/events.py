"""Live updates for the console: change-stream hints as server-sent events.

``GET /api/v1/events?topics=health,flags,configs`` answers ``text/event-stream``; each
committed change sends ``event: change`` with ``data: {"topic": ..., "seq": ...}`` and the
page re-reads what it shows through the JSON API. Events carry no row data, so what a
caller sees is still decided by the RPCs; a topic needs the permission of the RPC that
reads it (:data:`TOPICS`), and a tenant admin hears only of its own tenant's configs.

:class:`ChangeFeed` is the one place that knows where changes come from (today the
process's tail, ``App.tail.add_listener``, with ``storage.stream.ChangeEvent``); moving
to another change API means changing :meth:`ChangeFeed.attach` and :func:`topic_of` only.

The page uses ``fetch`` with an ``Authorization`` header to read the stream (EventSource
cannot send one, and the token never goes in a URL). A comment line every
:data:`KEEPALIVE_S` keeps proxies from closing an idle stream and notices gone clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from domain import events as outbox
from domain.errors import InvalidArgument
from domain.events import ChangeEvent
from server.http.auth import authorize

if TYPE_CHECKING:
    from server.app import App
    from server.security.principal import Principal

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
# Hints waiting for one slow client; beyond this the oldest are dropped (the page re-reads
# everything on any hint, so a dropped hint loses nothing).
QUEUE_SIZE = 64
# Topic -> the RPC whose permission it needs.
TOPICS = {
    "health": "/platform_admin.v1.HealthService/GetPlatformHealth",
    "flags": "/platform_admin.v1.FlagService/ListFlags",
    "configs": "/platform_admin.v1.ConfigService/ListConfigs",
}
_SUBJECT_TOPICS = {
    outbox.HEALTH_CHANGED: "health",
    outbox.FLAG_CHANGED: "flags",
    outbox.CONFIG_CHANGED: "configs",
}


def topic_of(event: ChangeEvent) -> str | None:
    return _SUBJECT_TOPICS.get(event.subject)


class _Client:
    def __init__(self, topics: frozenset[str], principal: Principal) -> None:
        self.topics = topics
        self.tenant_id = principal.tenant_id if principal.is_tenant_scoped else None
        self.queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, hint: dict[str, object] | None) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(hint)


class ChangeFeed:
    """Fans each change-stream batch out to the open event streams, as topic hints."""

    def __init__(self) -> None:
        self._clients: set[_Client] = set()

    def attach(self, app: App) -> None:
        app.tail.add_listener(self._on_batch)

    def _on_batch(self, events: list[ChangeEvent]) -> None:
        if not self._clients:
            return
        for event in events:
            topic = topic_of(event)
            if topic is None:
                continue
            hint: dict[str, object] = {"topic": topic, "seq": event.seq}
            for client in self._clients:
                if topic not in client.topics:
                    continue
                if topic == "configs" and client.tenant_id and event.tenant_id != client.tenant_id:
                    continue
                client.offer(hint)

    async def close(self) -> None:
        """Ends every open stream (listener stop)."""
        for client in self._clients:
            client.offer(None)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("topics", "")
        topics = frozenset(t for t in raw.split(",") if t)
        unknown = sorted(topics - TOPICS.keys())
        if not topics or unknown:
            raise InvalidArgument.field(
                "topics", f"expected a comma-separated subset of {', '.join(TOPICS)}"
            )
        principal = None
        for topic in sorted(topics):
            principal = authorize(request, TOPICS[topic])
        assert principal is not None
        client = _Client(topics, principal)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        self._clients.add(client)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while True:
                try:
                    hint = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if hint is None:
                    break
                await response.write(f"event: change\ndata: {json.dumps(hint)}\n\n".encode())
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._clients.discard(client)
        return response
