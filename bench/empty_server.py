"""The baselines of `make bench` and `make bench-watch`, on an identical grpc.aio server.

Same server options as the service (server/app.py ``server_options``), the same method
paths, the same request parsing and response serialization, but no interceptor and no
work: each unary handler returns a preallocated empty response. This is what a gRPC call
costs on this machine before any of our code runs.

WatchFlags and UpdateFlag are the fan-out baseline: each stream sends ``snapshot_end``,
then one message per UpdateFlag call (its ``flag_changed.etag`` the call's number; a
cursor and the flag's fields as the service sends them, so the bytes are the same size),
encoded once and sent by one task per stream woken through an asyncio.Event, which is
the least a grpc.aio server does to deliver a change to every open stream.

Usage: python -m bench.empty_server PORT [REUSE_PORT]
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from platform_admin.v1 import config_pb2, flag_pb2

from domain import cursor
from server.app import server_options
from server.ops import gc_tuning


class FanOut:
    """UpdateFlag broadcasts one pre-encoded message to every open WatchFlags stream."""

    def __init__(self) -> None:
        self.version = 0
        self.database_id = uuid.uuid4()
        self.streams: dict[int, tuple[deque[bytes], asyncio.Event]] = {}
        self.snapshot_end = flag_pb2.WatchFlagsResponse(snapshot_end={}).SerializeToString()

    async def update(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.version += 1
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        message = flag_pb2.WatchFlagsResponse(
            cursor=cursor.encode(self.database_id, self.version),
            flag_changed=flag_pb2.Flag(
                key=request.key,
                description=request.description,
                create_time=stamp,
                update_time=stamp,
                etag=str(self.version),
            ),
        ).SerializeToString()
        for queue, wake in self.streams.values():
            queue.append(message)
            wake.set()
        return flag_pb2.UpdateFlagResponse(flag=flag_pb2.Flag(etag=str(self.version)))

    async def watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        queue: deque[bytes] = deque()
        wake = asyncio.Event()
        self.streams[id(queue)] = (queue, wake)
        try:
            yield self.snapshot_end
            while True:
                while queue:
                    yield queue.popleft()
                wake.clear()
                await wake.wait()
        finally:
            del self.streams[id(queue)]

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "UpdateFlag": grpc.unary_unary_rpc_method_handler(
                self.update,
                request_deserializer=flag_pb2.UpdateFlagRequest.FromString,
                response_serializer=flag_pb2.UpdateFlagResponse.SerializeToString,
            ),
            "WatchFlags": grpc.unary_stream_rpc_method_handler(
                self.watch, request_deserializer=flag_pb2.WatchFlagsRequest.FromString
            ),
        }


def _handlers(
    service: ServiceDescriptor, overrides: dict[str, grpc.RpcMethodHandler] | None = None
) -> grpc.GenericRpcHandler:
    methods: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        request_class = GetMessageClass(method.input_type)
        response = GetMessageClass(method.output_type)()

        async def call(request: Any, context: grpc.aio.ServicerContext, _r: Any = response) -> Any:
            return _r

        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=request_class.FromString,
            response_serializer=type(response).SerializeToString,
        )
    methods.update(overrides or {})
    return grpc.method_handlers_generic_handler(service.full_name, methods)


async def serve(port: int, reuse_port: bool) -> None:
    server = grpc.aio.server(options=server_options(reuse_port))
    services = config_pb2.DESCRIPTOR.services_by_name, flag_pb2.DESCRIPTOR.services_by_name
    server.add_generic_rpc_handlers(
        (
            _handlers(services[0]["ConfigService"]),
            _handlers(services[1]["FlagService"], FanOut().handlers()),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    gc_tuning.tune_for_serving()  # as `platform-admin serve` does
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "1"))
