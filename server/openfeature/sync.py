"""flagd.sync.v1.FlagSyncService: the flag set for flagd's in-process providers.

SyncFlags sends the whole set (flagd_json.py) at once and again after every change.
Changes are coalesced: the first after a quiet period goes out at once (the provider
sees a commit within the change stream's latency), later ones at most every
``min_interval_s`` (a burst of a thousand writes costs a few renderings, not a
thousand). A rendering is shared by every stream with the same selector for the same
state (named by the read model's seq), so many providers cost one rendering per change.

The selector, from the ``flagd-selector`` header or the deprecated request field (the
header wins), narrows the set to ``flags`` or ``configs``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from domain.errors import InvalidArgument
from domain.text import has_control
from server.changes.read_model import ReadModel
from server.openfeature import flagd_json
from server.openfeature.changes import KeyChange, KeyChanges
from server.openfeature.flagd_json import Selector
from server.openfeature.streams import Streams, stream_lost

SELECTOR_HEADER = "flagd-selector"
MIN_INTERVAL_S = 0.25


def selector_of(field: str, context: grpc.aio.ServicerContext) -> Selector:
    for name, value in context.invocation_metadata() or ():
        if name == SELECTOR_HEADER:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return flagd_json.parse_selector(SELECTOR_HEADER, text)
    return flagd_json.parse_selector("selector", field)


def check_provider_id(provider_id: str) -> None:
    """The provider's self-chosen name is only logged, but never with control characters."""
    if has_control(provider_id):
        raise InvalidArgument.field("provider_id", "must not contain control characters")


def _selected(selector: Selector, change: KeyChange) -> bool:
    if selector is Selector.ALL:
        return True
    return change.is_config == (selector is Selector.CONFIGS)


@dataclass(eq=False)
class FlagSync(sync_pb2_grpc.FlagSyncServiceServicer):
    read_model: ReadModel
    feed: KeyChanges
    streams: Streams
    min_interval_s: float = MIN_INTERVAL_S
    # The rendering per selector and the read-model seq it was rendered at.
    _rendered: dict[Selector, tuple[int, str]] = field(default_factory=dict, init=False)

    def _current(self, selector: Selector) -> str:
        """The rendering for the current state, shared across streams (fresh after changes)."""
        self.read_model.live_flags()  # UNAVAILABLE until the read model is loaded
        # Streams render after a change the read model has applied (its seq moved), so the
        # seq names the state; this process's own writes are followed by their event.
        seq = self.read_model.seq
        cached = self._rendered.get(selector)
        if cached is not None and cached[0] == seq:
            return cached[1]
        text = flagd_json.render(self.read_model.state, selector)
        self._rendered[selector] = (seq, text)
        return text

    async def SyncFlags(
        self, request: sync_pb2.SyncFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sync_pb2.SyncFlagsResponse]:
        check_provider_id(request.provider_id)
        selector = selector_of(request.selector, context)
        wake = asyncio.Event()

        lost = False

        def on_change(change: KeyChange | None) -> None:
            nonlocal lost
            if change is None:
                lost = True
                wake.set()
            elif _selected(selector, change):
                wake.set()

        loop = asyncio.get_running_loop()
        with self.streams.open(wake):
            unsubscribe = self.feed.subscribe(on_change)
            try:
                sent = self._current(selector)
                yield sync_pb2.SyncFlagsResponse(flag_configuration=sent)
                sent_at = loop.time()
                while True:
                    await self.streams.wait(wake, None)
                    delay = sent_at + self.min_interval_s - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)  # coalesce the rest of the burst
                        await self.streams.wait(wake, 0)
                    if lost:
                        raise stream_lost()
                    text = self._current(selector)
                    if text == sent:
                        continue
                    sent = text
                    yield sync_pb2.SyncFlagsResponse(flag_configuration=text)
                    sent_at = loop.time()
            finally:
                unsubscribe()

    async def FetchAllFlags(
        self, request: sync_pb2.FetchAllFlagsRequest, context: grpc.aio.ServicerContext
    ) -> sync_pb2.FetchAllFlagsResponse:
        check_provider_id(request.provider_id)
        selector = selector_of(request.selector, context)
        self.read_model.live_flags()
        # Rendered afresh: this process's own writes reach the read model before the feed.
        text = flagd_json.render(self.read_model.state, selector)
        return sync_pb2.FetchAllFlagsResponse(flag_configuration=text)

    async def GetMetadata(
        self, request: sync_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext
    ) -> sync_pb2.GetMetadataResponse:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "GetMetadata is deprecated and not served; flag set metadata is in the JSON",
        )
        raise AssertionError("unreachable")  # abort raises
