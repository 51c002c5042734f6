"""flagd.evaluation.v1.Service and flagd.evaluation.v2.Service: flagd's RPC mode.

Every Resolve* call maps the context to a tenant/node (context.py), asks
:class:`~server.openfeature.answers.Answers` (the read model: one evaluation rule) and
encodes the answer. Errors are flagd's own codes with our ErrorInfo reasons: an unknown
key is NOT_FOUND (FLAG_NOT_FOUND), a wrong type or a bad context INVALID_ARGUMENT
(TYPE_MISMATCH, INVALID_CONTEXT, TARGETING_KEY_MISSING) naming the field or attribute.

Encoded answers are cached: an answer depends only on the key, its value, reason,
variant and metadata, so a hot ResolveBoolean is a look-up; each Resolve* has an
``@encoded`` twin the pipeline serves, handing the bytes to gRPC unchanged
(server/rpc/encoded.py).

EventStream sends ``provider_ready`` at once, one ``configuration_change`` per change
batch (keys coalesced while the client reads), ``keep_alive`` when idle, and ends with
UNAVAILABLE at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import grpc
from flagd.evaluation.v1 import evaluation_pb2 as v1
from flagd.evaluation.v1 import evaluation_pb2_grpc as v1_grpc
from flagd.evaluation.v2 import evaluation_pb2 as v2
from flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc

from server.openfeature.answers import Answer, Answers, Kind, flag_not_found, type_mismatch
from server.openfeature.changes import KeyChange, KeyChanges
from server.openfeature.context import (
    NODE_ATTRIBUTE,
    TARGETING_KEY,
    TENANT_ATTRIBUTE,
    Target,
    target_of,
)
from server.openfeature.streams import Streams, stream_lost
from server.rpc.encoded import SUFFIX, decoded, encoded

KEEP_ALIVE_S = 20.0
_CACHE_LIMIT = 50_000
_READ = (TENANT_ATTRIBUTE, TARGETING_KEY, NODE_ATTRIBUTE)


def _plain(value: Any) -> Any:
    """A Struct value as target_of reads it: strings as such, null or unset as None."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)  # a number, bool, list or struct: rejected as not a string


def target_from_struct(context: Any) -> Target:
    """Reads only the attributes that matter, however large the context is."""
    fields = context.fields
    return target_of({name: _plain(fields[name]) for name in _READ if name in fields})


class _Encoder:
    """Encoded Resolve* responses, shared by every caller with the same answer."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def encode(self, response_type: Callable[..., Any], answer: Answer) -> bytes:
        cache_key = (
            response_type,
            answer.key,
            answer.reason,
            answer.value,
            type(answer.value),
            answer.variant,
            tuple(answer.metadata.items()),
        )
        encoded = self._cache.get(cache_key)
        if encoded is None:
            fields: dict[str, Any] = {"reason": answer.reason}
            if answer.value is not None:
                fields["value"] = answer.value
            if answer.variant is not None:
                fields["variant"] = answer.variant
            response = response_type(**fields)
            response.metadata.update(answer.metadata)
            encoded = response.SerializeToString()
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[cache_key] = encoded
        return encoded


class Evaluation:
    """The logic both protocol versions share; the servicers only bind message types."""

    def __init__(
        self, answers: Answers, feed: KeyChanges, streams: Streams, keep_alive_s: float
    ) -> None:
        self.answers = answers
        self.feed = feed
        self.streams = streams
        self.keep_alive_s = keep_alive_s
        self._encoder = _Encoder()

    def resolve(self, request: Any, kind: Kind, response_type: Callable[..., Any]) -> bytes:
        key = request.flag_key
        target = target_from_struct(request.context)
        if kind is Kind.OBJECT:
            actual = self.answers.evaluate(key, target)  # NOT_FOUND first, like flagd
            raise type_mismatch(key, actual.kind, kind)
        if not key:
            raise flag_not_found(key)
        return self._encoder.encode(response_type, self.answers.evaluate(key, target, kind))

    async def events(self, response_type: Callable[..., Any]) -> AsyncIterator[Any]:
        wake = asyncio.Event()
        pending: dict[str, str] = {}
        lost = False

        def on_change(change: KeyChange | None) -> None:
            nonlocal lost
            if change is None:
                lost = True
            else:
                pending[change.key] = change.type
            wake.set()

        with self.streams.open(wake):
            unsubscribe = self.feed.subscribe(on_change)
            try:
                yield response_type(type="provider_ready")
                while True:
                    if not await self.streams.wait(wake, self.keep_alive_s):
                        yield response_type(type="keep_alive")
                        continue
                    if lost:
                        raise stream_lost()
                    if not pending:
                        continue
                    # Every key changed since the last message, in one message.
                    changed = {key: {"type": kind} for key, kind in pending.items()}
                    pending.clear()
                    message = response_type(type="configuration_change")
                    message.data.update({"flags": changed})
                    yield message
            finally:
                unsubscribe()


_RESOLVERS = (
    ("ResolveBoolean", Kind.BOOLEAN),
    ("ResolveString", Kind.STRING),
    ("ResolveFloat", Kind.FLOAT),
    ("ResolveInt", Kind.INTEGER),
    ("ResolveObject", Kind.OBJECT),
)


class _FlagdServicer:
    """What both protocol versions' servicers share; each binds its own message module."""

    messages: ClassVar[ModuleType]
    # Bound by @_serving from _RESOLVERS, with their ``@encoded`` twins.
    ResolveBoolean: Callable[..., Awaitable[Any]]
    ResolveString: Callable[..., Awaitable[Any]]
    ResolveFloat: Callable[..., Awaitable[Any]]
    ResolveInt: Callable[..., Awaitable[Any]]
    ResolveObject: Callable[..., Awaitable[Any]]

    def __init__(self, shared: Evaluation) -> None:
        self.shared = shared

    async def EventStream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for message in self.shared.events(self.messages.EventStreamResponse):
            yield message


def _resolver(rpc: str, kind: Kind, response_type: Any) -> tuple[Callable[..., Any], ...]:
    """``<rpc>`` (returns the message) and its ``@encoded`` twin (returns the bytes)."""

    @encoded
    async def twin(self: _FlagdServicer, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        return self.shared.resolve(request, kind, response_type)

    twin.__name__ = twin.__qualname__ = rpc + SUFFIX
    return decoded(rpc, response_type), twin


S = TypeVar("S", bound=type[_FlagdServicer])


def _serving(messages: ModuleType) -> Callable[[S], S]:
    """Binds a servicer class to a version's messages and gives it every Resolve<Type>."""

    def bind(cls: S) -> S:
        cls.messages = messages
        for rpc, kind in _RESOLVERS:
            method, twin = _resolver(rpc, kind, getattr(messages, rpc + "Response"))
            setattr(cls, rpc, method)
            setattr(cls, rpc + SUFFIX, twin)
        return cls

    return bind


@_serving(v2)
class EvaluationV2(_FlagdServicer, v2_grpc.ServiceServicer):
    """flagd.evaluation.v2.Service: what the current Python and JS flagd providers call."""


@_serving(v1)
class EvaluationV1(_FlagdServicer, v1_grpc.ServiceServicer):
    """v1 has no optional value: an archived flag answers false, reason DISABLED."""

    async def ResolveAll(
        self, request: v1.ResolveAllRequest, context: grpc.aio.ServicerContext
    ) -> v1.ResolveAllResponse:
        target = target_from_struct(request.context)
        response = v1.ResolveAllResponse()
        for answer in self.shared.answers.evaluate_all(target):
            entry = response.flags[answer.key]
            entry.reason = answer.reason
            entry.variant = answer.variant or ""
            value = answer.value
            if isinstance(value, bool):
                entry.bool_value = value
            elif isinstance(value, int | float):
                entry.double_value = float(value)
            elif isinstance(value, str):
                entry.string_value = value
            entry.metadata.update(answer.metadata)
        return response
