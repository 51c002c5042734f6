"""Server reflection over every service this port serves, platform_admin.v1 and flagd alike.

flagd's generated messages live in a descriptor pool of their own (generated/flagd/_pool.py,
so a process may load them beside a flagd provider's copies), which the default reflection
servicer cannot see. Reflection gets a pool of its own instead, built once from the files
of both pools with their dependencies, so ``grpcurl list`` and ``describe`` show the flagd
services as they show ours.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

# Files reflection must also answer for, without services of their own: the error details
# every failure carries (grpcurl decodes ErrorInfo / BadRequest through reflection).
_ALSO = [error_details_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR]


def _pool_of(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def enable(server: grpc.aio.Server, files: Iterable[FileDescriptor]) -> None:
    """Reflection for every service defined in ``files``, and for reflection itself."""
    every = [*files, reflection_pb2.DESCRIPTOR]
    names = [service.full_name for file in every for service in file.services_by_name.values()]
    reflection.enable_server_reflection(names, server, pool=_pool_of([*every, *_ALSO]))
