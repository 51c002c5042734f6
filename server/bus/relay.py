"""The outbox relay: every sequenced outbox row, in seq order, to NATS JetStream.

One relay works at a time across replicas and workers: the leader holds a session-level
advisory lock on a PostgreSQL session of its own (storage/relay.py); the others try to
take it every second, so when the leader's process dies its lock goes with its session
and another replica takes over within about a second.

The leader reads the oldest sequenced rows without ``published_at`` and publishes them
pipelined, in seq order; each message names its predecessor in
``Nats-Expected-Last-Msg-Id``, so JetStream refuses it unless the row before it is on the
stream: a failure can never let a later row overtake an earlier one (subscribers rely on
order). A PubAck (``duplicate`` included: JetStream
already held that Nats-Msg-Id) marks the row published; a failure records ``attempt``,
``last_error`` and ``next_attempt_at`` (exponential back-off with jitter, capped at
PLATFORM_ADMIN_RELAY_MAX_BACKOFF_S) and the relay waits for that row before anything
behind it.

Re-publishing after a takeover: rows published by a leader that died before marking them
are detected on taking the lock (the stream's last message names its outbox row and seq:
every unpublished row up to it is marked without being sent again); anything else that is
re-sent within the stream's duplicate window is dropped by JetStream by its Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from domain import events
from server.bus.connection import ensure_relay_stream
from server.bus.publisher import Publisher
from server.ops import metrics
from server.settings import Settings
from storage.relay import PendingRow, RelaySession

log = logging.getLogger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SEQ = "Platform-Admin-Seq"
HEADER_CHANGED_BY = "Platform-Admin-Changed-By"
HEADER_TENANT = "Platform-Admin-Tenant-Id"
HEADER_EXPECTED_LAST = "Nats-Expected-Last-Msg-Id"
HEADER_EXPECTED_STREAM = "Nats-Expected-Stream"
SUBJECTS = events.SUBJECTS

# Rows read, published (pipelined) and marked (one UPDATE) at a time. A row published but
# not yet marked is sent again only after a crash, and then deduplicated.
READ_BATCH = 256
PUBLISH_TIMEOUT_S = 2.0
# Without a wake-up from the change engine the relay still looks this often.
POLL_S = 1.0
# A replica that is not the leader tries to become it this often.
LEADER_RETRY_S = 1.0
# A leader that cannot reach NATS this long gives the lock up, so a replica that can
# reach the bus may take over.
GIVE_UP_AFTER_S = 5.0
BACKOFF_BASE_S = 0.1


def backoff(attempt: int, cap_s: float) -> float:
    """Delay before the next try of a row that failed ``attempt`` times before (0-based).

    Exponential from BACKOFF_BASE_S, capped, with jitter in [cap/2, cap] of each step so
    replicas retrying after a shared outage do not all come back at once.
    """
    step = min(cap_s, BACKOFF_BASE_S * float(2 ** min(attempt, 30)))
    jitter: float = random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
    return step * jitter


def headers_of(row: PendingRow) -> dict[str, str]:
    headers = {
        HEADER_MSG_ID: row.id,
        HEADER_SEQ: str(row.seq),
        HEADER_CHANGED_BY: row.changed_by,
    }
    if row.tenant_id:
        headers[HEADER_TENANT] = row.tenant_id
    return headers


def describe(exc: BaseException) -> str:
    """What last_error says: the error's kind and message, never connection secrets."""
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


@dataclass(eq=False)
class Relay:
    session: RelaySession
    settings: Settings
    wake: asyncio.Event
    _nats: Callable[[], Client | None]
    leader: bool = field(default=False, init=False)
    stream_ready: bool = field(default=False, init=False)
    _failing_since: float | None = field(default=None, init=False)
    _pub: Publisher | None = field(default=None, init=False)
    # The id of the last row this leader saw acked: the next message's expected
    # predecessor. None after a failure or a takeover (the next message names none).
    _last_id: str | None = field(default=None, init=False)
    # Tests replace this to die between publishing and marking.
    mark: Callable[[list[str]], Awaitable[None]] = field(init=False)

    def __post_init__(self) -> None:
        self.mark = self.session.mark_published

    async def run(self) -> None:
        delay = LEADER_RETRY_S
        try:
            while True:
                try:
                    if not self.leader:
                        await self._try_lead()
                        if not self.leader:
                            await asyncio.sleep(LEADER_RETRY_S)
                            continue
                    due_in = await self._drain()
                    delay = LEADER_RETRY_S
                    if self._should_give_up():
                        log.warning(
                            "relay: NATS unreachable for %.0fs; giving the leader lock up",
                            GIVE_UP_AFTER_S,
                        )
                        await self._resign()
                        await asyncio.sleep(LEADER_RETRY_S)
                        continue
                    await self._wait(due_in)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The relay's database session failed: whoever holds the lock next resumes
                    # from the oldest unmarked row.
                    if self.leader:
                        log.warning("relay stopped leading (database session lost): %s", exc)
                    else:
                        log.debug("relay cannot reach the database: %s", exc)
                    await self._resign()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            await self._resign()

    async def _try_lead(self) -> None:
        nc = self._nats()
        if nc is None or not nc.is_connected:
            return
        if not await self.session.acquire():
            return
        self.leader = True
        self._failing_since = None
        log.info("relay: this process is the leader")
        with contextlib.suppress(Exception):
            await self._ensure_stream(nc)
        await self._mark_already_published(nc)

    async def _resign(self) -> None:
        self.leader = False
        self._last_id = None
        await self.session.close()

    def _should_give_up(self) -> bool:
        since = self._failing_since
        nc = self._nats()
        return (
            since is not None
            and time.monotonic() - since > GIVE_UP_AFTER_S
            and (nc is None or not nc.is_connected)
        )

    def _publisher(self, nc: Client) -> Publisher:
        """One publisher (and reply subscription) per connection."""
        if self._pub is None or self._pub.nc is not nc:
            self._pub = Publisher(nc)
        return self._pub

    async def _ensure_stream(self, nc: Client) -> None:
        if not self.stream_ready:
            await ensure_relay_stream(nc.jetstream(), self.settings)
            self.stream_ready = True

    async def _mark_already_published(self, nc: Client) -> None:
        """Marks the rows a previous leader published but died before marking.

        Publishing is strictly in seq order, so every row up to the highest seq found on
        the stream was published. The last message is trusted only when the outbox row of
        that seq has its Nats-Msg-Id (the stream might be shared with another database).
        """
        js = nc.jetstream()
        found: list[tuple[int, str]] = []
        for subject in SUBJECTS:
            try:
                msg = await js.get_last_msg(self.settings.nats_stream, subject)
            except NotFoundError:
                continue
            except Exception as exc:
                log.debug("relay: last message of %s unreadable: %s", subject, exc)
                return
            headers = msg.headers or {}
            seq_text = str(headers.get(HEADER_SEQ, ""))
            if seq_text.isdigit():
                found.append((int(seq_text), str(headers.get(HEADER_MSG_ID, ""))))
        if not found:
            return
        seq, msg_id = max(found)
        if await self.session.id_of(seq) != msg_id:
            return
        marked = await self.session.mark_published_upto(seq)
        if marked:
            log.info("relay: %d rows up to seq %d were already on the stream", marked, seq)

    async def _wait(self, due_in: float | None) -> None:
        if due_in is not None:
            # The head row is backing off: nothing behind it may go first, so new changes
            # do not wake the relay before the row is due.
            await asyncio.sleep(min(due_in, POLL_S))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_S):
                await self.wake.wait()
        self.wake.clear()

    async def _drain(self) -> float | None:
        """Publishes due rows until none is left; returns the head row's wait when it is
        backing off, else None."""
        while True:
            self.wake.clear()
            rows = await self.session.pending(READ_BATCH)
            if not rows:
                return None
            if rows[0].wait_s > 0:
                return rows[0].wait_s
            due = []
            for row in rows:
                if row.wait_s > 0:
                    break
                due.append(row)
            published, error = await self._publish(due)
            await self.mark([row.id for row in due[:published]])
            if error is not None:
                failed = due[published]
                delay = backoff(failed.attempt, self.settings.relay_max_backoff_s)
                await self.session.mark_failed(failed.id, error, delay)
                return delay
            if len(due) < len(rows) or len(rows) < READ_BATCH:
                return None

    async def _publish(self, rows: list[PendingRow]) -> tuple[int, str | None]:
        """Publishes ``rows`` in order, pipelined; returns (how many of the first ones got a
        PubAck, the error of the next one or None).

        Each message but the first names its predecessor in ``Nats-Expected-Last-Msg-Id``,
        so JetStream refuses it unless the row before it is on the stream: a row that failed
        is never overtaken by the ones sent after it. (A re-sent row already on the stream
        is answered as a duplicate before that check.)
        """
        nc = self._nats()
        futures: list[asyncio.Future[dict[str, Any]]] = []
        error: str | None = None
        try:
            if nc is None:
                raise ConnectionError("not connected to NATS")
            await self._ensure_stream(nc)
            publisher = self._publisher(nc)
            previous = self._last_id
            for row in rows:
                headers = headers_of(row)
                headers[HEADER_EXPECTED_STREAM] = self.settings.nats_stream
                if previous is not None:
                    headers[HEADER_EXPECTED_LAST] = previous
                futures.append(await publisher.publish(row.subject, row.body.encode(), headers))
                previous = row.id
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = describe(exc)
        acked = 0
        if futures:
            # One wait for the whole window: a wait per future would cost a turn of the
            # event loop each, behind every call the process is serving.
            await asyncio.wait(
                futures, timeout=PUBLISH_TIMEOUT_S, return_when=asyncio.FIRST_EXCEPTION
            )
        for future in futures:
            if not future.done():
                error = "TimeoutError: no PubAck in time"
                break
            failure = None if future.cancelled() else future.exception()
            if future.cancelled() or failure is not None:
                error = describe(failure) if failure is not None else "cancelled"
                break
            acked += 1
        for future in futures[acked:]:
            future.cancel()
        if acked:
            self._last_id = rows[acked - 1].id
            self._failing_since = None
            metrics.relay_published(acked)
        if error is None and acked < len(rows):
            error = "not sent"
        if error is not None:
            failed = rows[acked]
            # The stream may be gone (a nats-server started afresh): look again next time.
            self.stream_ready = False
            self._last_id = None
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            metrics.relay_failed()
            log.log(
                logging.DEBUG if failed.attempt else logging.WARNING,
                "relay: publishing seq %d failed (attempt %d): %s",
                failed.seq,
                failed.attempt + 1,
                error,
            )
        return acked, error
