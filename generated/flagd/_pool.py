"""The descriptor pool flagd's generated messages are registered in (not the default one).

The flagd providers ship generated code for the same proto packages under another file
name; both in the default pool would clash ("duplicate symbol") in any process that
serves or tests these protocols next to a provider. `make generate` points the generated
modules here instead of at ``descriptor_pool.Default()``; the wire format is unchanged.
"""

from google.protobuf import descriptor_pool, struct_pb2

_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)


def Default() -> descriptor_pool.DescriptorPool:  # noqa: N802  (stands in for descriptor_pool.Default)
    return _POOL
