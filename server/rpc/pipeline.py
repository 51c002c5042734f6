"""The call pipeline: one wrapper around every RPC handler.

It authenticates the caller and binds the principal, applies the server-side default
deadline to unary calls, turns domain errors into rich statuses (server/rpc/errors.py) and
unexpected exceptions into a generic INTERNAL, and reports each call to the observers
(logs, metrics). Wrapped handlers are cached per method, so the per-call cost is one
extra coroutine frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from domain.errors import DeadlineExceeded, DomainError, PermissionDenied
from server.rpc.encoded import passing_bytes, twin_of
from server.rpc.errors import INTERNAL, status_code_of, to_status
from server.rpc.observers import CallObserver, FinishedCall
from server.security import principal as principal_ctx
from server.security.principal import Principal
from storage.db import call_deadline, deadline_after

log = logging.getLogger(__name__)

# Methods any caller may use without a token: operators' probes and grpcurl discovery.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class Authorizer(Protocol):
    """Turns call metadata into a principal allowed to call ``method`` (or raises)."""

    def authorize(
        self, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> Principal: ...


class AllowAll:
    """Authentication off: every call is the anonymous platform admin."""

    def authenticate(self, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
        return principal_ctx.ANONYMOUS_ADMIN

    def authorize(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
        return principal_ctx.ANONYMOUS_ADMIN


def domain_error(exc: BaseException, method: str) -> DomainError:
    """Domain errors go out as they are; anything else is a bug: INTERNAL, details logged.

    Database errors never get here: storage/ translates every driver error at its boundary
    (storage/db.py ``Database.read`` / ``transaction``, storage/notify.py).
    """
    if isinstance(exc, DomainError):
        return exc
    log.exception("unhandled error in %s", method, exc_info=exc)
    return INTERNAL


class _Resume:
    """Awaits the rest of a coroutine whose first step already ran and yielded ``first``.

    What ``await`` would have done had it been awaited from the start: each value the
    coroutine yields goes to the task, each value or exception the task sends back goes
    to the coroutine (a timeout's cancellation included).
    """

    __slots__ = ("call", "first")

    def __init__(self, call: Any, first: Any) -> None:
        self.call = call
        self.first = first

    def __await__(self) -> Any:
        call, pending = self.call, self.first
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # thrown in by the task (e.g. CancelledError)
                try:
                    pending = call.throw(exc)
                except StopIteration as finished:
                    return finished.value
            else:
                try:
                    pending = call.send(sent)
                except StopIteration as finished:
                    return finished.value


class Pipeline(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        authorizer: Authorizer,
        default_deadline_s: float,
        observers: list[CallObserver] | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.default_deadline_s = default_deadline_s
        self.observers = observers or []
        self._starters: list[Callable[[str], None]] = [
            o.on_call_start for o in self.observers if hasattr(o, "on_call_start")
        ]
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def guard(self, server: grpc.aio.Server) -> GuardedServer:
        """``server`` as the App registers on it: every handler runs in this pipeline."""
        return GuardedServer(server, self)

    def handler_for(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` wrapped in the pipeline (public methods as they are), once per method."""
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        wrapped = self._wrap(method, handler)
        self._cache[method] = wrapped
        return wrapped

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """As an interceptor (a bare server in tests); the App uses :meth:`guard`."""
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        return self.handler_for(method, await continuation(handler_call_details))

    def _start(self, method: str) -> float:
        for starter in self._starters:
            starter(method)
        return time.perf_counter()

    def _done(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        who: Principal | None,
        metadata: Any,
    ) -> None:
        if self.observers:
            call = FinishedCall(method, code, time.perf_counter() - started, who, metadata)
            for observer in self.observers:
                observer.on_call_done(call)

    async def call_unary(
        self,
        method: str,
        handler: Callable[[Any, Any], Awaitable[Any]],
        request: Any,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> Any:
        """Runs one unary servicer method outside gRPC, with the same steps as a gRPC call.

        For the HTTP listener's JSON API (server/http/api.py): authorize ``method`` from the
        metadata, bind the principal, apply the default deadline, report to the observers;
        failures come out as a DomainError (the one error mapping), never a raw exception.
        The servicer gets no gRPC context (unary methods do not use it).
        """
        started = self._start(method)
        who: Principal | None = None
        try:
            who = self.authorizer.authorize(method, metadata)
            token = principal_ctx.bind(who)
            deadline = call_deadline.set(deadline_after(self.default_deadline_s))
            try:
                async with asyncio.timeout(self.default_deadline_s):
                    response = await handler(request, None)
            finally:
                call_deadline.reset(deadline)
                principal_ctx.unbind(token)
        except TimeoutError:
            self._done(method, grpc.StatusCode.DEADLINE_EXCEEDED, started, who, metadata)
            raise DeadlineExceeded("the call did not finish within its deadline") from None
        except asyncio.CancelledError:
            self._done(method, grpc.StatusCode.CANCELLED, started, who, metadata)
            raise
        except Exception as exc:
            error = domain_error(exc, method)
            self._done(method, status_code_of(error), started, who, metadata)
            raise error from None
        self._done(method, grpc.StatusCode.OK, started, who, metadata)
        return response

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        authorizer = self.authorizer
        default_deadline = self.default_deadline_s

        if handler.unary_unary is not None:
            # A hot read's twin answers with encoded bytes (server/rpc/encoded.py).
            inner_unary = twin_of(handler.unary_unary) or handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = self._start(method)
                metadata = context.invocation_metadata() or ()
                who: Principal | None = None
                try:
                    who = authorizer.authorize(method, metadata)
                    token = principal_ctx.bind(who)
                    try:
                        remaining = context.time_remaining()
                        budget = (
                            default_deadline
                            if remaining is None
                            else min(remaining, default_deadline)
                        )
                        deadline = call_deadline.set(deadline_after(budget))
                        try:
                            # First step without a timer: a handler that answers from memory
                            # finishes here, and a timer could not interrupt it anyway.
                            call = inner_unary(request, context)
                            try:
                                waiting_on = call.send(None)
                            except StopIteration as finished:
                                response = finished.value
                            else:
                                async with asyncio.timeout_at(
                                    asyncio.get_running_loop().time() + budget
                                ):
                                    response = await _Resume(call, waiting_on)
                        finally:
                            call_deadline.reset(deadline)
                    finally:
                        principal_ctx.unbind(token)
                except TimeoutError:
                    self._done(method, grpc.StatusCode.DEADLINE_EXCEEDED, started, who, metadata)
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "the call did not finish within its deadline",
                    )
                except asyncio.CancelledError:
                    # The client went away (or the server is stopping): still one log line.
                    self._done(method, grpc.StatusCode.CANCELLED, started, who, metadata)
                    raise
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        code = context.code() or grpc.StatusCode.UNKNOWN
                        self._done(method, code, started, who, metadata)
                        raise
                    error = domain_error(exc, method)
                    self._done(method, status_code_of(error), started, who, metadata)
                    await context.abort_with_status(to_status(error))
                self._done(method, grpc.StatusCode.OK, started, who, metadata)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=passing_bytes(handler.response_serializer),
            )

        if handler.unary_stream is not None:
            # A watch stream's twin yields each change encoded once for every stream.
            inner_stream = twin_of(handler.unary_stream) or handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = self._start(method)
                metadata = context.invocation_metadata() or ()
                who: Principal | None = None
                code = grpc.StatusCode.OK
                try:
                    who = authorizer.authorize(method, metadata)
                    token = principal_ctx.bind(who)
                    try:
                        async for item in inner_stream(request, context):
                            yield item
                    finally:
                        principal_ctx.unbind(token)
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    error = domain_error(exc, method)
                    code = status_code_of(error)
                    await context.abort_with_status(to_status(error))
                finally:
                    self._done(method, code, started, who, metadata)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=passing_bytes(handler.response_serializer),
            )
        return _denied(method, handler)


class _Guarded(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose every method runs in the pipeline."""

    def __init__(self, inner: grpc.GenericRpcHandler, pipeline: Pipeline) -> None:
        self._inner = inner
        self._pipeline = pipeline

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        return self._pipeline.handler_for(method, self._inner.service(handler_call_details))


class GuardedServer:
    """A grpc.aio server whose handlers are wrapped in the pipeline as they are registered.

    Wrapping at registration rather than through a ServerInterceptor: an interceptor is
    awaited on every call before the handler runs, and registered methods (the generated
    ``add_*_to_server`` registers them) would need that lookup too. Everything else is
    the server's own. The App holds only this object, so nothing registers around it.
    """

    def __init__(self, server: grpc.aio.Server, pipeline: Pipeline) -> None:
        self._server = server
        self._pipeline = pipeline

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Guarded(h, self._pipeline) for h in handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._pipeline.handler_for(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _denied(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of a kind the pipeline does not wrap (client or bidirectional streaming).

    Returned as is, it would run unauthenticated and without a principal: until the
    pipeline learns that kind, every call to it is refused before it runs.
    """
    log.error("%s is a client-streaming RPC, which the pipeline does not authorize", method)
    status = to_status(
        PermissionDenied(
            "this RPC is not served: its call kind is not authorized by this server",
            reason="CALL_KIND_NOT_AUTHORIZED",
        )
    )

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (a generator, as stream_stream handlers are)

    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
