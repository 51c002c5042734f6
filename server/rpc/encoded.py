"""Pre-encoded answers: the one seam where a handler hands gRPC bytes instead of a message.

The read model caches its hottest answers (EvaluateFlags, ResolveConfigs) as encoded bytes
(server/changes/read_model.py), so a repeated call neither builds nor serializes a message.
Types still tell the truth: the servicer method named after the RPC returns the message
(what the generated base class, a direct call or a test expects), and its twin marked
``@encoded`` and named ``<Rpc>Encoded`` returns the bytes. The call pipeline serves the
RPC with the twin when there is one, with a serializer that sends bytes as they are
(server/rpc/pipeline.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_serves_encoded"
SUFFIX = "Encoded"


def encoded(method: F) -> F:
    """Marks ``<Rpc>Encoded``: the bytes-returning twin of the servicer method ``<Rpc>``."""
    setattr(method, _MARK, True)
    return method


def decoded(rpc: str, response_type: Any) -> Callable[..., Awaitable[Any]]:
    """The servicer method ``rpc``: the message its ``@encoded`` twin's bytes decode to.

    Assigned in the class body (``EvaluateFlags = decoded("EvaluateFlags", ...)``) beside
    the twin ``<rpc>Encoded``, which does the work; over gRPC the pipeline serves the twin.
    """
    twin_name = rpc + SUFFIX

    async def method(self: Any, request: Any, context: Any) -> Any:
        return response_type.FromString(await getattr(self, twin_name)(request, context))

    method.__name__ = method.__qualname__ = rpc
    return method


def decoded_stream(rpc: str, response_type: Any) -> Callable[..., AsyncIterator[Any]]:
    """:func:`decoded` for a server stream: its twin yields messages or encoded bytes."""
    twin_name = rpc + SUFFIX

    async def method(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in getattr(self, twin_name)(request, context):
            yield response_type.FromString(item) if item.__class__ is bytes else item

    method.__name__ = method.__qualname__ = rpc
    return method


def twin_of(handler: Callable[..., Any]) -> Callable[..., Any] | None:
    """For a bound servicer method, its ``@encoded`` twin (bound too), if it has one."""
    owner = getattr(handler, "__self__", None)
    name = getattr(handler, "__name__", None)
    if owner is None or name is None:
        return None
    twin = getattr(owner, name + SUFFIX, None)
    return twin if twin is not None and getattr(twin, _MARK, False) else None


def passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serialize``, except that an answer already encoded goes out unchanged."""
    if serialize is None:
        return None

    def serializer(response: Any) -> bytes:
        if response.__class__ is bytes:
            encoded_answer: bytes = response
            return encoded_answer
        return serialize(response)

    return serializer
