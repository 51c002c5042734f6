"""The call pipeline fails closed: what it does not wrap is refused, nothing has a default.

A client-streaming RPC added to a service would, returned unwrapped, run without
authentication and without a principal; the principal itself has no default (an anonymous
admin would be what such a handler saw); the server is never composed with an authorizer
nobody chose.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from server import cli
from server.app import App
from server.rpc.pipeline import AllowAll, Pipeline
from server.security import principal
from tests.auth_helpers import ADMIN, as_caller, jwt_authorizer
from tests.helpers import failure_of


def _identity(raw: bytes) -> bytes:
    return raw


@pytest.fixture
async def probe_server() -> AsyncIterator[tuple[grpc.aio.Channel, list[str]]]:
    """A real server behind the pipeline with one RPC of each kind; ``ran`` records which
    handlers were entered."""
    ran: list[str] = []

    async def unary(request: bytes, context: Any) -> bytes:
        ran.append(f"unary as {principal.current().subject}")
        return b"ok"

    async def collect(requests: Any, context: Any) -> bytes:
        ran.append("collect")
        return b"".join([r async for r in requests])

    async def chat(requests: Any, context: Any) -> AsyncIterator[bytes]:
        ran.append("chat")
        async for item in requests:
            yield item

    kinds = {"request_deserializer": _identity, "response_serializer": _identity}
    handlers = {
        "ListConfigKeys": grpc.unary_unary_rpc_method_handler(unary, **kinds),
        "Collect": grpc.stream_unary_rpc_method_handler(collect, **kinds),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, **kinds),
    }
    server = grpc.aio.server(interceptors=[Pipeline(jwt_authorizer(), 5.0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("platform_admin.v1.ConfigService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, ran
    finally:
        await server.stop(0)


async def test_handler_kinds_the_pipeline_does_not_wrap_are_refused(probe_server):
    channel, ran = probe_server
    md = as_caller(ADMIN)  # a valid admin token: refused anyway, the kind is not authorized
    path = "/platform_admin.v1.ConfigService/"
    kw = {"request_serializer": _identity, "response_deserializer": _identity}

    async def requests() -> AsyncIterator[bytes]:
        # Nothing to send: the refusal does not race the client's writes.
        for item in ():
            yield item

    with pytest.raises(grpc.aio.AioRpcError) as collected:
        await channel.stream_unary(path + "Collect", **kw)(requests(), metadata=md, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as chatted:
        call = channel.stream_stream(path + "Chat", **kw)(requests(), metadata=md, timeout=5)
        async for _ in call:
            pass
    for error in (collected.value, chatted.value):
        failure = failure_of(error)
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED
        assert failure.reason == "CALL_KIND_NOT_AUTHORIZED"
    assert ran == []
    # The kinds it wraps still work, with the caller's principal bound.
    answer = await channel.unary_unary(path + "ListConfigKeys", **kw)(b"x", metadata=md, timeout=5)
    assert answer == b"ok" and ran == [f"unary as {ADMIN.sub}"]


def test_reading_the_principal_outside_a_call_raises():
    with pytest.raises(principal.NoPrincipal):
        contextvars.Context().run(principal.current)
    token = principal.bind(principal.ANONYMOUS_ADMIN)
    try:
        assert principal.current() is principal.ANONYMOUS_ADMIN
    finally:
        principal.unbind(token)


def test_no_server_is_composed_with_an_authorizer_nobody_chose(settings):
    with pytest.raises(TypeError, match="authorizer"):
        App(settings, "postgresql://unused")  # type: ignore[call-arg]
    serve = inspect.signature(cli._serve).parameters["authorizer"]
    assert serve.default is inspect.Parameter.empty
    assert "AllowAll" not in inspect.getsource(cli)
    assert isinstance(App(settings, "postgresql://unused", authorizer=AllowAll()), App)
