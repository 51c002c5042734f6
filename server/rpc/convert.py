"""Conversions shared by servicers: timestamps, enums, typed values."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import config_pb2

from domain.config_keys import ConfigValue, Scope, ValueType
from domain.errors import InvalidArgument

SCOPE_TO_PROTO = {
    Scope.PLATFORM: config_pb2.CONFIG_SCOPE_PLATFORM,
    Scope.TENANT: config_pb2.CONFIG_SCOPE_TENANT,
    Scope.NODE: config_pb2.CONFIG_SCOPE_NODE,
}
SCOPE_FROM_PROTO = {v: k for k, v in SCOPE_TO_PROTO.items()}
VALUE_TYPE_TO_PROTO = {
    ValueType.INTEGER: config_pb2.CONFIG_VALUE_TYPE_INTEGER,
    ValueType.BOOLEAN: config_pb2.CONFIG_VALUE_TYPE_BOOLEAN,
    ValueType.STRING: config_pb2.CONFIG_VALUE_TYPE_STRING,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def scope_from_proto(field: str, value: int, *, required: bool) -> Scope | None:
    """Proto enum → Scope; UNSPECIFIED is None (an error when required)."""
    if value == config_pb2.CONFIG_SCOPE_UNSPECIFIED:
        if required:
            raise InvalidArgument.field(field, "is required (PLATFORM, TENANT or NODE)")
        return None
    scope: Scope | None = SCOPE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if scope is None:
        raise InvalidArgument.field(field, f"unknown scope value {value}")
    return scope


def source_scope_to_proto(scope: Scope | None) -> config_pb2.ConfigScope:
    """Where a resolved value came from; UNSPECIFIED means the key's default."""
    return SCOPE_TO_PROTO[scope] if scope else config_pb2.CONFIG_SCOPE_UNSPECIFIED


def value_to_proto(value: ConfigValue) -> config_pb2.ConfigValue:
    if isinstance(value, bool):
        return config_pb2.ConfigValue(bool_value=value)
    if isinstance(value, int):
        return config_pb2.ConfigValue(int_value=value)
    return config_pb2.ConfigValue(string_value=value)


def value_from_proto(message: config_pb2.ConfigValue) -> ConfigValue | None:
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    value: ConfigValue = getattr(message, kind)
    return value
