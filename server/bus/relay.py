"""The outbox relay: every sequenced outbox row, in seq order, to NATS JetStream.

One relay works at a time across replicas and workers: the leader holds a session-level
advisory lock on a PostgreSQL session of its own (storage/relay.py); the others try to
take it every second, so when the leader's process dies its lock goes with its session
and another replica takes over within about a second.

The leader reads the oldest sequenced rows without ``published_at`` and publishes them
one at a time, each awaiting its PubAck, so a failure can never let a later row overtake
an earlier one (subscribers rely on order). A PubAck (``duplicate`` included: JetStream
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

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from server.bus.connection import ensure_relay_stream
from server.ops import metrics
from server.settings import Settings
from storage import outbox
from storage.relay import PendingRow, RelaySession

log = logging.getLogger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SEQ = "Platform-Admin-Seq"
HEADER_CHANGED_BY = "Platform-Admin-Changed-By"
HEADER_TENANT = "Platform-Admin-Tenant-Id"
SUBJECTS = (outbox.FLAG_CHANGED, outbox.CONFIG_CHANGED, outbox.HEALTH_CHANGED)

READ_BATCH = 256
# Marks are batched (one UPDATE per MARK_EVERY rows or at the end of a read); a row
# published but not yet marked is re-sent only after a crash, and then deduplicated.
MARK_EVERY = 64
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


class Relay:
    def __init__(
        self,
        session: RelaySession,
        settings: Settings,
        wake: asyncio.Event,
        nats: Callable[[], Client | None],
    ) -> None:
        self.session = session
        self.settings = settings
        self.wake = wake
        self._nats = nats
        self.leader = False
        self.stream_ready = False
        self._failing_since: float | None = None
        # Tests replace this to die between publishing and marking.
        self.mark: Callable[[list[str]], Awaitable[None]] = self.session.mark_published

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
        await self.session.close()

    def _should_give_up(self) -> bool:
        since = self._failing_since
        nc = self._nats()
        return (
            since is not None
            and time.monotonic() - since > GIVE_UP_AFTER_S
            and (nc is None or not nc.is_connected)
        )

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
            published: list[str] = []
            try:
                for row in rows:
                    if row.wait_s > 0:
                        return row.wait_s
                    error = await self._publish(row)
                    if error is not None:
                        await self._flush(published)
                        delay = backoff(row.attempt, self.settings.relay_max_backoff_s)
                        await self.session.mark_failed(row.id, error, delay)
                        return delay
                    published.append(row.id)
                    if len(published) >= MARK_EVERY:
                        await self._flush(published)
            finally:
                # Also on the way out through a database error: those rows were published.
                with contextlib.suppress(Exception):
                    await self._flush(published)
            if len(rows) < READ_BATCH:
                return None

    async def _flush(self, published: list[str]) -> None:
        if published:
            ids = list(published)
            published.clear()
            await self.mark(ids)

    async def _publish(self, row: PendingRow) -> str | None:
        """Publishes one row and awaits its PubAck; the error text when it failed."""
        nc = self._nats()
        try:
            if nc is None:
                raise ConnectionError("not connected to NATS")
            await self._ensure_stream(nc)
            await nc.jetstream().publish(
                row.subject,
                row.body.encode(),
                timeout=PUBLISH_TIMEOUT_S,
                stream=self.settings.nats_stream,
                headers=headers_of(row),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The stream may be gone (a nats-server started afresh): look again next time.
            self.stream_ready = False
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            metrics.relay_failed()
            log.log(
                logging.DEBUG if row.attempt else logging.WARNING,
                "relay: publishing seq %d failed (attempt %d): %s",
                row.seq,
                row.attempt + 1,
                describe(exc),
            )
            return describe(exc)
        self._failing_since = None
        metrics.relay_published()
        return None
