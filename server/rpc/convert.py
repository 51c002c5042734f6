"""Conversions shared by servicers and watch streams: timestamps, enums, values, states.

A flag or config reaches the API in one way, whether from a unary RPC or a watch stream:
as its change event (domain/events.py) through :func:`flag_to_proto` / :func:`config_to_proto`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import config_pb2, flag_pb2

from domain.config_keys import ConfigValue, Scope, ValueType
from domain.errors import InvalidArgument
from domain.etags import format_etag
from domain.events import ConfigChanged, FlagChanged
from domain.flags import Evaluation, Reason

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


REASON_TO_PROTO = {
    Reason.DEFAULT: flag_pb2.EVALUATION_REASON_DEFAULT,
    Reason.TENANT_ENABLED: flag_pb2.EVALUATION_REASON_TENANT_ENABLED,
    Reason.TENANT_DISABLED: flag_pb2.EVALUATION_REASON_TENANT_DISABLED,
    Reason.ARCHIVED: flag_pb2.EVALUATION_REASON_ARCHIVED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime | None) -> Timestamp | None:
    """An aware datetime as a Timestamp, by integer arithmetic: twice as fast as
    ``FromDatetime``, which matters for pages of a thousand results."""
    if value is None:
        return None
    micros = (value - _EPOCH) // _MICROSECOND
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def flag_to_proto(flag: FlagChanged) -> flag_pb2.Flag:
    return flag_pb2.Flag(
        key=flag.key,
        description=flag.description,
        default_enabled=flag.default_enabled,
        enabled_tenant_ids=flag.enabled_tenant_ids,
        disabled_tenant_ids=flag.disabled_tenant_ids,
        archived=flag.archived,
        create_time=timestamp(flag.create_time),
        update_time=timestamp(flag.update_time),
        etag=format_etag(flag.version),
    )


def config_to_proto(config: ConfigChanged) -> config_pb2.Config:
    return config_pb2.Config(
        key=config.key,
        scope=SCOPE_TO_PROTO[config.scope],
        tenant_id=config.tenant_id or "",
        node_id=config.node_id or "",
        value=value_to_proto(config.value),
        description=config.description,
        archived=config.archived,
        update_time=timestamp(config.update_time),
        etag=format_etag(config.version),
    )


def evaluation_to_proto(evaluation: Evaluation) -> flag_pb2.Evaluation:
    return flag_pb2.Evaluation(
        enabled=evaluation.enabled, reason=REASON_TO_PROTO[evaluation.reason]
    )


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
