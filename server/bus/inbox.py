"""The inbox: events the platform sends this service, consumed from JetStream once each.

A durable pull consumer (``platform-admin``, shared by every replica: each message goes
to one of them) on the inbox stream. Per message, in one transaction: its inbox row (id
= its Nats-Msg-Id header, else ``<stream>:<stream sequence>``) and its effect through the
same storage functions as the RPCs (version bump, config history, outbox row, so watch
streams, the read model and the relay see it). A message whose id is already recorded
changes nothing. The message is acked only after commit: a crash before the ack means a
redelivery, which then finds its id.

A malformed message (bad JSON, bad ULID, unknown service, unknown subject) is recorded
with its error, acked and counted; it never blocks the ones behind it. A message that
fails for a passing reason (the database unreachable) is not acked and comes back later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from domain import inbox_events as rules
from domain.errors import DomainError, InvalidArgument, NotFound
from server.bus.connection import ensure_inbox_stream
from server.ops import metrics
from server.settings import Settings
from storage import inbox as store
from storage.db import Database

log = logging.getLogger(__name__)

DURABLE = "platform-admin"
FETCH_BATCH = 64
FETCH_TIMEOUT_S = 1.0
ACK_WAIT_S = 30.0
# A message that failed for a passing reason comes back after this long.
RETRY_DELAY_S = 1.0


class Inbox:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        nats: Callable[[], Client | None],
        ack_wait_s: float | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self._nats = nats
        # How long JetStream waits for an ack before redelivering (read at construction so
        # tests can shorten it).
        self.ack_wait_s = ACK_WAIT_S if ack_wait_s is None else ack_wait_s

    async def run(self) -> None:
        delay = RETRY_DELAY_S
        while True:
            nc = self._nats()
            if nc is None or not nc.is_connected:
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            try:
                js = nc.jetstream()
                subscription = await self._subscribe(js)
                delay = RETRY_DELAY_S
                await self._consume(subscription)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbox: consuming failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        await ensure_inbox_stream(js, self.settings)
        stream = self.settings.inbox_stream
        try:
            await js.consumer_info(stream, DURABLE)
        except NotFoundError:
            await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=DURABLE,
                    name=DURABLE,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait_s,
                    max_ack_pending=1000,
                    description="platform-admin inbox",
                ),
            )
        return await js.pull_subscribe_bind(DURABLE, stream)

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in messages:
                await self.handle(msg)

    def _message_id(self, msg: Msg) -> tuple[str, int | None, str | None]:
        """(inbox id, stream sequence, why the header is unusable or None)."""
        sequence: int | None = None
        with contextlib.suppress(Exception):
            sequence = msg.metadata.sequence.stream
        fallback = f"{self.settings.inbox_stream}:{sequence}"
        header = (msg.headers or {}).get("Nats-Msg-Id")
        if not header:
            return fallback, sequence, None
        if len(header) > store.MAX_ID_CHARS:
            return fallback, sequence, f"Nats-Msg-Id is longer than {store.MAX_ID_CHARS}"
        return header, sequence, None

    async def handle(self, msg: Msg) -> str:
        """Applies one message; returns its outcome (applied, duplicate, malformed, failed)."""
        label = rules.subject_label(msg.subject)
        message_id, sequence, id_error = self._message_id(msg)
        outcome: str
        try:
            try:
                if id_error is not None:
                    raise InvalidArgument.field("Nats-Msg-Id", id_error)
                event = rules.parse(msg.subject, msg.data)
                applied = await store.apply(self.db, message_id, msg.subject, sequence, event)
                outcome = "applied" if applied else "duplicate"
            except (InvalidArgument, NotFound) as exc:
                # Recorded with its error; a failure to record it is a passing one (below).
                outcome = await self._malformed(msg, message_id, sequence, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Database unreachable or the like: not acked, JetStream delivers it again.
            text = exc.message if isinstance(exc, DomainError) else repr(exc)
            log.warning("inbox: message %s not applied, will be redelivered: %s", message_id, text)
            metrics.inbox_message(label, "failed")
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY_S)
            return "failed"
        await self.ack(msg)
        metrics.inbox_message(label, outcome)
        return outcome

    async def _malformed(self, msg: Msg, message_id: str, sequence: int | None, error: str) -> str:
        log.warning("inbox: malformed message %s on %s: %s", message_id, msg.subject, error)
        recorded = await store.record_malformed(self.db, message_id, msg.subject, sequence, error)
        return "malformed" if recorded else "duplicate"

    async def ack(self, msg: Msg) -> None:
        """Acks after commit (tests replace it to lose an ack and force a redelivery)."""
        await msg.ack()
