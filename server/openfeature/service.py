"""Wires the OpenFeature parts into one object the App registers and stops."""

from __future__ import annotations

import grpc
from flagd.evaluation.v1 import evaluation_pb2 as v1
from flagd.evaluation.v1 import evaluation_pb2_grpc as v1_grpc
from flagd.evaluation.v2 import evaluation_pb2 as v2
from flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from server.changes.feed import ChangeFeed
from server.changes.read_model import ReadModel
from server.openfeature.answers import Answers
from server.openfeature.changes import KeyChanges
from server.openfeature.evaluation import KEEP_ALIVE_S, Evaluation, EvaluationV1, EvaluationV2
from server.openfeature.streams import Streams
from server.openfeature.sync import FlagSync

SERVICE_NAMES = [
    v1.DESCRIPTOR.services_by_name["Service"].full_name,
    v2.DESCRIPTOR.services_by_name["Service"].full_name,
    sync_pb2.DESCRIPTOR.services_by_name["FlagSyncService"].full_name,
]


class OpenFeature:
    def __init__(
        self, read_model: ReadModel, feed: ChangeFeed, keep_alive_s: float = KEEP_ALIVE_S
    ) -> None:
        self.feed = KeyChanges(feed, read_model)
        self.streams = Streams()
        self.answers = Answers(read_model)
        self.evaluation = Evaluation(self.answers, self.feed, self.streams, keep_alive_s)
        self.sync = FlagSync(read_model, self.feed, self.streams)

    def register(self, server: grpc.aio.Server) -> None:
        v1_grpc.add_ServiceServicer_to_server(EvaluationV1(self.evaluation), server)
        v2_grpc.add_ServiceServicer_to_server(EvaluationV2(self.evaluation), server)
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(self.sync, server)

    async def close(self, timeout: float) -> None:
        """Open EventStream / SyncFlags streams end with UNAVAILABLE."""
        await self.streams.close(timeout)
        await self.feed.close()
