"""Wires the OpenFeature parts into one object the App registers and stops."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from flagd.evaluation.v1 import evaluation_pb2 as v1
from flagd.evaluation.v2 import evaluation_pb2 as v2
from flagd.sync.v1 import sync_pb2
from google.protobuf.message import DecodeError

from domain.errors import InvalidArgument
from server.changes.feed import ChangeFeed
from server.changes.read_model import ReadModel
from server.openfeature.answers import Answers
from server.openfeature.changes import KeyChanges
from server.openfeature.evaluation import KEEP_ALIVE_S, Evaluation, EvaluationV1, EvaluationV2
from server.openfeature.streams import Streams
from server.openfeature.sync import FlagSync
from server.rpc.encoded import twin_of

# The files defining the services (their own descriptor pool; see server/rpc/reflection.py).
FILES = [v1.DESCRIPTOR, v2.DESCRIPTOR, sync_pb2.DESCRIPTOR]
SERVICE_NAMES = [
    v1.DESCRIPTOR.services_by_name["Service"].full_name,
    v2.DESCRIPTOR.services_by_name["Service"].full_name,
    sync_pb2.DESCRIPTOR.services_by_name["FlagSyncService"].full_name,
]


@dataclass(frozen=True)
class _Undecodable:
    """A request that is not a valid encoding of its message (e.g. nested too deeply)."""

    why: str


def _undecodable(request: _Undecodable) -> InvalidArgument:
    return InvalidArgument.field("request", f"is not a valid message ({request.why[:200]})")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """gRPC answers a request its deserializer rejects with UNKNOWN, before any handler
    runs; evaluation contexts are arbitrary Structs (a deep one exceeds the decoder's
    depth limit), so the handler says INVALID_ARGUMENT instead."""

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse_or_mark


def _unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def checked(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            raise _undecodable(request)
        return await method(request, context)

    return checked


def _streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def checked(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            raise _undecodable(request)
        async for message in method(request, context):
            yield message

    return checked


def _handlers(servicer: object, module: Any, service: str) -> grpc.GenericRpcHandler:
    """The service's method handlers, as the generated ``add_*_to_server`` would build
    them, but with lenient request decoding (:func:`_lenient`)."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in descriptor.methods:
        parse = _lenient(getattr(module, method.input_type.name).FromString)
        serialize = getattr(module, method.output_type.name).SerializeToString
        # The @encoded twin when there is one (server/rpc/encoded.py): it returns the bytes.
        implementation = getattr(servicer, method.name)
        implementation = twin_of(implementation) or implementation
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(implementation),
                request_deserializer=parse,
                response_serializer=serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(implementation), request_deserializer=parse, response_serializer=serialize
            )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


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
        server.add_generic_rpc_handlers(
            (
                _handlers(EvaluationV1(self.evaluation), v1, "Service"),
                _handlers(EvaluationV2(self.evaluation), v2, "Service"),
                _handlers(self.sync, sync_pb2, "FlagSyncService"),
            )
        )

    async def close(self, timeout: float) -> None:
        """Open EventStream / SyncFlags streams end with UNAVAILABLE."""
        await self.streams.close(timeout)
        await self.feed.close()
