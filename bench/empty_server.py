"""The read baseline of `make bench`: empty unary handlers on an identical grpc.aio server.

Same server options as the service (server/app.py ``server_options``), the same method
paths, the same request parsing and response serialization, but no interceptor and no
work: each handler returns a preallocated empty response. This is what a gRPC call costs
on this machine before any of our code runs.

Usage: python -m bench.empty_server PORT [REUSE_PORT]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from platform_admin.v1 import config_pb2, flag_pb2

from server.app import server_options


def _handlers(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
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
    return grpc.method_handlers_generic_handler(service.full_name, methods)


async def serve(port: int, reuse_port: bool) -> None:
    server = grpc.aio.server(options=server_options(reuse_port))
    server.add_generic_rpc_handlers(
        tuple(
            _handlers(module.DESCRIPTOR.services_by_name[name])
            for module, name in ((config_pb2, "ConfigService"), (flag_pb2, "FlagService"))
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "1"))
