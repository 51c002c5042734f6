"""Live updates for the console: change-stream hints as server-sent events.

``GET /api/v1/events?topics=health,flags,configs`` answers ``text/event-stream``; each
committed change sends ``event: change`` with ``data: {"topic": ..., "seq": ...}`` and the
page re-reads what it shows through the JSON API. Events carry no row data, so what a
caller sees is still decided by the RPCs; a topic needs the permission of the RPC that
reads it (:data:`TOPICS`), and a tenant admin hears only of config rows it may see.

Each stream is one subscription to the process's change feed (``App.changes.subscribe``,
server/changes/feed.py) from NOW: :class:`LiveHints` is the only code here that knows the
feed. When the subscription lags or expires the page is told to re-read everything (a
``resync`` hint) or the stream ends and the page reconnects and re-reads: nothing is missed.

The page uses ``fetch`` with an ``Authorization`` header to read the stream (EventSource
cannot send one, and the token never goes in a URL). A comment line every
:data:`KEEPALIVE_S` on an idle stream keeps proxies from closing it and notices gone clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from domain import events
from domain.errors import InvalidArgument
from domain.events import ChangeEvent, ConfigChanged
from server.changes.feed import NOW, Expired, Idle, Lagging, Subscription
from server.http.auth import authorize

if TYPE_CHECKING:
    from server.app import App
    from server.security.principal import Principal

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
# Hints buffered for one slow page before its subscription re-reads (then says "resync").
QUEUE_LIMIT = 256
# Topic -> (the RPC whose permission it needs, the change subject it follows).
TOPICS = {
    "health": ("/platform_admin.v1.HealthService/GetPlatformHealth", events.HEALTH_CHANGED),
    "flags": ("/platform_admin.v1.FlagService/ListFlags", events.FLAG_CHANGED),
    "configs": ("/platform_admin.v1.ConfigService/ListConfigs", events.CONFIG_CHANGED),
}
_TOPIC_OF = {subject: topic for topic, (_, subject) in TOPICS.items()}


def _sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class LiveHints:
    """The console's one coupling to the change feed: one subscription per open stream."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._open: set[Subscription] = set()

    def subscribe(self, topics: frozenset[str], principal: Principal) -> Subscription:
        tenant = principal.tenant_id if principal.is_tenant_scoped else None

        def visible(event: ChangeEvent) -> bool:
            change = event.change
            return (
                tenant is None
                or not isinstance(change, ConfigChanged)
                or (change.visible_to_tenant(tenant))
            )

        subscription = self.app.changes.subscribe(
            NOW,
            subjects=[TOPICS[t][1] for t in topics],
            accept=visible,
            queue_limit=QUEUE_LIMIT,
            idle_s=KEEPALIVE_S,
        )
        self._open.add(subscription)
        return subscription

    def release(self, subscription: Subscription) -> None:
        subscription.close()
        self._open.discard(subscription)

    async def close(self) -> None:
        """Ends every open stream (the listener is stopping)."""
        for subscription in list(self._open):
            subscription.close()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("topics", "")
        topics = frozenset(t for t in raw.split(",") if t)
        if not topics or topics - TOPICS.keys():
            raise InvalidArgument.field(
                "topics", f"expected a comma-separated subset of {', '.join(TOPICS)}"
            )
        principals = [authorize(request, TOPICS[t][0]) for t in sorted(topics)]
        subscription = self.subscribe(topics, principals[0])
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            async for item in subscription:
                if isinstance(item, ChangeEvent):
                    hint = {"topic": _TOPIC_OF[item.subject], "seq": item.seq}
                    await response.write(_sse("change", hint))
                elif isinstance(item, Idle):
                    await response.write(b": keepalive\n\n")
                elif isinstance(item, Lagging):
                    await response.write(_sse("change", {"topic": "resync", "seq": 0}))
                elif isinstance(item, Expired):
                    break  # the page reconnects and re-reads everything
        except ConnectionResetError:
            pass  # the page went away
        except Exception:  # a database error while catching up: end; the page reconnects
            log.warning("console event stream ended", exc_info=True)
        finally:
            self.release(subscription)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
