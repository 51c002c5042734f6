"""What wakes the relay: the change feed's notice that new changes were sequenced.

The relay reads its rows from the outbox table (``published_at IS NULL``, in seq order),
so from the change engine it needs only a signal, never the events themselves: this
module subscribes to the process's change feed (server/changes/feed.py) from NOW and sets
an event for every change delivered. It is the one place in server/bus/ that knows the
engine's API.
"""

from __future__ import annotations

import asyncio
import logging

from server.changes.feed import NOW, ChangeFeed, Expired

log = logging.getLogger(__name__)

RETRY_S = 1.0


class ChangeSignal:
    """``event`` is set whenever the change feed hands out newly sequenced changes."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self.event = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async for item in self.feed.subscribe(NOW):
                    self.event.set()
                    if isinstance(item, Expired):
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The feed read from the database and failed; the relay polls meanwhile.
                log.debug("relay wake-up subscription failed: %s", exc)
                await asyncio.sleep(RETRY_S)
            # After a gap or an error the relay looks at the table anyway.
            self.event.set()
