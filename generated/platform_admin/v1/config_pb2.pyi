import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from platform_admin.v1 import watch_pb2 as _watch_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_SCOPE_UNSPECIFIED: _ClassVar[ConfigScope]
    CONFIG_SCOPE_PLATFORM: _ClassVar[ConfigScope]
    CONFIG_SCOPE_TENANT: _ClassVar[ConfigScope]
    CONFIG_SCOPE_NODE: _ClassVar[ConfigScope]

class ConfigValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_VALUE_TYPE_UNSPECIFIED: _ClassVar[ConfigValueType]
    CONFIG_VALUE_TYPE_INTEGER: _ClassVar[ConfigValueType]
    CONFIG_VALUE_TYPE_BOOLEAN: _ClassVar[ConfigValueType]
    CONFIG_VALUE_TYPE_STRING: _ClassVar[ConfigValueType]

class ConfigChangeAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_CHANGE_ACTION_UNSPECIFIED: _ClassVar[ConfigChangeAction]
    CONFIG_CHANGE_ACTION_SET: _ClassVar[ConfigChangeAction]
    CONFIG_CHANGE_ACTION_ARCHIVE: _ClassVar[ConfigChangeAction]
    CONFIG_CHANGE_ACTION_UNARCHIVE: _ClassVar[ConfigChangeAction]
CONFIG_SCOPE_UNSPECIFIED: ConfigScope
CONFIG_SCOPE_PLATFORM: ConfigScope
CONFIG_SCOPE_TENANT: ConfigScope
CONFIG_SCOPE_NODE: ConfigScope
CONFIG_VALUE_TYPE_UNSPECIFIED: ConfigValueType
CONFIG_VALUE_TYPE_INTEGER: ConfigValueType
CONFIG_VALUE_TYPE_BOOLEAN: ConfigValueType
CONFIG_VALUE_TYPE_STRING: ConfigValueType
CONFIG_CHANGE_ACTION_UNSPECIFIED: ConfigChangeAction
CONFIG_CHANGE_ACTION_SET: ConfigChangeAction
CONFIG_CHANGE_ACTION_ARCHIVE: ConfigChangeAction
CONFIG_CHANGE_ACTION_UNARCHIVE: ConfigChangeAction

class ConfigValue(_message.Message):
    __slots__ = ("int_value", "bool_value", "string_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    bool_value: bool
    string_value: str
    def __init__(self, int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ...) -> None: ...

class Config(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id", "value", "description", "archived", "update_time", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    value: ConfigValue
    description: str
    archived: bool
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ..., description: _Optional[str] = ..., archived: _Optional[bool] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class ConfigKey(_message.Message):
    __slots__ = ("key", "value_type", "allowed_scopes", "default_value", "min_value", "max_value", "max_length", "string_format", "description")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STRING_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value_type: ConfigValueType
    allowed_scopes: _containers.RepeatedScalarFieldContainer[ConfigScope]
    default_value: ConfigValue
    min_value: int
    max_value: int
    max_length: int
    string_format: str
    description: str
    def __init__(self, key: _Optional[str] = ..., value_type: _Optional[_Union[ConfigValueType, str]] = ..., allowed_scopes: _Optional[_Iterable[_Union[ConfigScope, str]]] = ..., default_value: _Optional[_Union[ConfigValue, _Mapping]] = ..., min_value: _Optional[int] = ..., max_value: _Optional[int] = ..., max_length: _Optional[int] = ..., string_format: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListConfigKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConfigKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ConfigKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ConfigKey, _Mapping]]] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: Config
    def __init__(self, config: _Optional[_Union[Config, _Mapping]] = ...) -> None: ...

class ListConfigsRequest(_message.Message):
    __slots__ = ("scope", "tenant_id", "node_id", "show_archived", "page_size", "page_token")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SHOW_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    scope: ConfigScope
    tenant_id: str
    node_id: str
    show_archived: bool
    page_size: int
    page_token: str
    def __init__(self, scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., show_archived: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConfigsResponse(_message.Message):
    __slots__ = ("configs", "next_page_token")
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.RepeatedCompositeFieldContainer[Config]
    next_page_token: str
    def __init__(self, configs: _Optional[_Iterable[_Union[Config, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetConfigRequest(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id", "value", "description", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    value: ConfigValue
    description: str
    etag: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ..., description: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class SetConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: Config
    def __init__(self, config: _Optional[_Union[Config, _Mapping]] = ...) -> None: ...

class ArchiveConfigRequest(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    etag: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ArchiveConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: Config
    def __init__(self, config: _Optional[_Union[Config, _Mapping]] = ...) -> None: ...

class UnarchiveConfigRequest(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id", "etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    etag: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class UnarchiveConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: Config
    def __init__(self, config: _Optional[_Union[Config, _Mapping]] = ...) -> None: ...

class ResolveConfigRequest(_message.Message):
    __slots__ = ("key", "tenant_id", "node_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    tenant_id: str
    node_id: str
    def __init__(self, key: _Optional[str] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class ResolveConfigResponse(_message.Message):
    __slots__ = ("value", "source_scope")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    value: ConfigValue
    source_scope: ConfigScope
    def __init__(self, value: _Optional[_Union[ConfigValue, _Mapping]] = ..., source_scope: _Optional[_Union[ConfigScope, str]] = ...) -> None: ...

class ResolveConfigsRequest(_message.Message):
    __slots__ = ("tenant_id", "node_id", "keys")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    node_id: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolvedConfig(_message.Message):
    __slots__ = ("key", "value", "source_scope")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: ConfigValue
    source_scope: ConfigScope
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ..., source_scope: _Optional[_Union[ConfigScope, str]] = ...) -> None: ...

class ResolveConfigsResponse(_message.Message):
    __slots__ = ("configs",)
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.RepeatedCompositeFieldContainer[ResolvedConfig]
    def __init__(self, configs: _Optional[_Iterable[_Union[ResolvedConfig, _Mapping]]] = ...) -> None: ...

class ListConfigHistoryRequest(_message.Message):
    __slots__ = ("key", "scope", "tenant_id", "node_id", "page_size", "page_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: str
    scope: ConfigScope
    tenant_id: str
    node_id: str
    page_size: int
    page_token: str
    def __init__(self, key: _Optional[str] = ..., scope: _Optional[_Union[ConfigScope, str]] = ..., tenant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ConfigHistoryEntry(_message.Message):
    __slots__ = ("id", "old_value", "new_value", "changed_by", "change_time", "action")
    ID_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    old_value: ConfigValue
    new_value: ConfigValue
    changed_by: str
    change_time: _timestamp_pb2.Timestamp
    action: ConfigChangeAction
    def __init__(self, id: _Optional[str] = ..., old_value: _Optional[_Union[ConfigValue, _Mapping]] = ..., new_value: _Optional[_Union[ConfigValue, _Mapping]] = ..., changed_by: _Optional[str] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[_Union[ConfigChangeAction, str]] = ...) -> None: ...

class ListConfigHistoryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ConfigHistoryEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[ConfigHistoryEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchConfigsRequest(_message.Message):
    __slots__ = ("cursor", "keys")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cursor: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchConfigsResponse(_message.Message):
    __slots__ = ("cursor", "snapshot", "snapshot_end", "config_changed", "heartbeat")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHANGED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    snapshot: Config
    snapshot_end: _watch_pb2.SnapshotEnd
    config_changed: Config
    heartbeat: _watch_pb2.Heartbeat
    def __init__(self, cursor: _Optional[str] = ..., snapshot: _Optional[_Union[Config, _Mapping]] = ..., snapshot_end: _Optional[_Union[_watch_pb2.SnapshotEnd, _Mapping]] = ..., config_changed: _Optional[_Union[Config, _Mapping]] = ..., heartbeat: _Optional[_Union[_watch_pb2.Heartbeat, _Mapping]] = ...) -> None: ...
