import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from platform_admin.v1 import watch_pb2 as _watch_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_REASON_UNSPECIFIED: _ClassVar[EvaluationReason]
    EVALUATION_REASON_DEFAULT: _ClassVar[EvaluationReason]
    EVALUATION_REASON_TENANT_ENABLED: _ClassVar[EvaluationReason]
    EVALUATION_REASON_TENANT_DISABLED: _ClassVar[EvaluationReason]
    EVALUATION_REASON_ARCHIVED: _ClassVar[EvaluationReason]

class TenantOverride(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_OVERRIDE_UNSPECIFIED: _ClassVar[TenantOverride]
    TENANT_OVERRIDE_ENABLED: _ClassVar[TenantOverride]
    TENANT_OVERRIDE_DISABLED: _ClassVar[TenantOverride]
    TENANT_OVERRIDE_INHERIT: _ClassVar[TenantOverride]
EVALUATION_REASON_UNSPECIFIED: EvaluationReason
EVALUATION_REASON_DEFAULT: EvaluationReason
EVALUATION_REASON_TENANT_ENABLED: EvaluationReason
EVALUATION_REASON_TENANT_DISABLED: EvaluationReason
EVALUATION_REASON_ARCHIVED: EvaluationReason
TENANT_OVERRIDE_UNSPECIFIED: TenantOverride
TENANT_OVERRIDE_ENABLED: TenantOverride
TENANT_OVERRIDE_DISABLED: TenantOverride
TENANT_OVERRIDE_INHERIT: TenantOverride

class Flag(_message.Message):
    __slots__ = ("key", "description", "default_enabled", "enabled_tenant_ids", "disabled_tenant_ids", "archived", "create_time", "update_time", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENABLED_TENANT_IDS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_TENANT_IDS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    description: str
    default_enabled: bool
    enabled_tenant_ids: _containers.RepeatedScalarFieldContainer[str]
    disabled_tenant_ids: _containers.RepeatedScalarFieldContainer[str]
    archived: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, key: _Optional[str] = ..., description: _Optional[str] = ..., default_enabled: _Optional[bool] = ..., enabled_tenant_ids: _Optional[_Iterable[str]] = ..., disabled_tenant_ids: _Optional[_Iterable[str]] = ..., archived: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("enabled", "reason")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    reason: EvaluationReason
    def __init__(self, enabled: _Optional[bool] = ..., reason: _Optional[_Union[EvaluationReason, str]] = ...) -> None: ...

class CreateFlagRequest(_message.Message):
    __slots__ = ("key", "description", "default_enabled")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    key: str
    description: str
    default_enabled: bool
    def __init__(self, key: _Optional[str] = ..., description: _Optional[str] = ..., default_enabled: _Optional[bool] = ...) -> None: ...

class CreateFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class GetFlagRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ("show_archived", "page_size", "page_token")
    SHOW_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    show_archived: bool
    page_size: int
    page_token: str
    def __init__(self, show_archived: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags", "next_page_token")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    next_page_token: str
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateFlagRequest(_message.Message):
    __slots__ = ("key", "description", "default_enabled", "update_mask", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    description: str
    default_enabled: bool
    update_mask: _field_mask_pb2.FieldMask
    etag: str
    def __init__(self, key: _Optional[str] = ..., description: _Optional[str] = ..., default_enabled: _Optional[bool] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class UpdateFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class SetTenantOverrideRequest(_message.Message):
    __slots__ = ("key", "tenant_id", "override", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    tenant_id: str
    override: TenantOverride
    etag: str
    def __init__(self, key: _Optional[str] = ..., tenant_id: _Optional[str] = ..., override: _Optional[_Union[TenantOverride, str]] = ..., etag: _Optional[str] = ...) -> None: ...

class SetTenantOverrideResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class ArchiveFlagRequest(_message.Message):
    __slots__ = ("key", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    etag: str
    def __init__(self, key: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ArchiveFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class UnarchiveFlagRequest(_message.Message):
    __slots__ = ("key", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    etag: str
    def __init__(self, key: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class UnarchiveFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class EvaluateFlagRequest(_message.Message):
    __slots__ = ("key", "tenant_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    tenant_id: str
    def __init__(self, key: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class EvaluateFlagResponse(_message.Message):
    __slots__ = ("enabled", "reason")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    reason: EvaluationReason
    def __init__(self, enabled: _Optional[bool] = ..., reason: _Optional[_Union[EvaluationReason, str]] = ...) -> None: ...

class EvaluateFlagsRequest(_message.Message):
    __slots__ = ("tenant_id", "keys")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateFlagsResponse(_message.Message):
    __slots__ = ("evaluations", "missing_keys")
    class EvaluationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Evaluation
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.MessageMap[str, Evaluation]
    missing_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, evaluations: _Optional[_Mapping[str, Evaluation]] = ..., missing_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchFlagsRequest(_message.Message):
    __slots__ = ("cursor", "keys")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cursor: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchFlagsResponse(_message.Message):
    __slots__ = ("cursor", "snapshot", "snapshot_end", "flag_changed", "heartbeat")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    FLAG_CHANGED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    snapshot: Flag
    snapshot_end: _watch_pb2.SnapshotEnd
    flag_changed: Flag
    heartbeat: _watch_pb2.Heartbeat
    def __init__(self, cursor: _Optional[str] = ..., snapshot: _Optional[_Union[Flag, _Mapping]] = ..., snapshot_end: _Optional[_Union[_watch_pb2.SnapshotEnd, _Mapping]] = ..., flag_changed: _Optional[_Union[Flag, _Mapping]] = ..., heartbeat: _Optional[_Union[_watch_pb2.Heartbeat, _Mapping]] = ...) -> None: ...
