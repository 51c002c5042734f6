import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNSPECIFIED: _ClassVar[HealthStatus]
    HEALTH_STATUS_HEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_DEGRADED: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNHEALTHY: _ClassVar[HealthStatus]
HEALTH_STATUS_UNSPECIFIED: HealthStatus
HEALTH_STATUS_HEALTHY: HealthStatus
HEALTH_STATUS_DEGRADED: HealthStatus
HEALTH_STATUS_UNHEALTHY: HealthStatus

class HealthSource(_message.Message):
    __slots__ = ("id", "service_id", "health_url", "staleness_threshold_s", "check_interval_s", "failure_threshold", "success_threshold", "last_heartbeat_time", "status", "status_time", "last_check_time", "create_time", "update_time", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_URL_FIELD_NUMBER: _ClassVar[int]
    STALENESS_THRESHOLD_S_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    service_id: str
    health_url: str
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int
    last_heartbeat_time: _timestamp_pb2.Timestamp
    status: HealthStatus
    status_time: _timestamp_pb2.Timestamp
    last_check_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, id: _Optional[str] = ..., service_id: _Optional[str] = ..., health_url: _Optional[str] = ..., staleness_threshold_s: _Optional[int] = ..., check_interval_s: _Optional[int] = ..., failure_threshold: _Optional[int] = ..., success_threshold: _Optional[int] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., status_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("id", "source_id", "status", "check_time", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: str
    source_id: str
    status: HealthStatus
    check_time: _timestamp_pb2.Timestamp
    details: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., source_id: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateHealthSourceRequest(_message.Message):
    __slots__ = ("service_id", "health_url", "staleness_threshold_s", "check_interval_s", "failure_threshold", "success_threshold")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_URL_FIELD_NUMBER: _ClassVar[int]
    STALENESS_THRESHOLD_S_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    health_url: str
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int
    def __init__(self, service_id: _Optional[str] = ..., health_url: _Optional[str] = ..., staleness_threshold_s: _Optional[int] = ..., check_interval_s: _Optional[int] = ..., failure_threshold: _Optional[int] = ..., success_threshold: _Optional[int] = ...) -> None: ...

class CreateHealthSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: HealthSource
    def __init__(self, source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class GetHealthSourceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetHealthSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: HealthSource
    def __init__(self, source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class ListHealthSourcesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHealthSourcesResponse(_message.Message):
    __slots__ = ("sources", "next_page_token")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[HealthSource]
    next_page_token: str
    def __init__(self, sources: _Optional[_Iterable[_Union[HealthSource, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateHealthSourceRequest(_message.Message):
    __slots__ = ("id", "health_url", "staleness_threshold_s", "check_interval_s", "failure_threshold", "success_threshold", "update_mask", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_URL_FIELD_NUMBER: _ClassVar[int]
    STALENESS_THRESHOLD_S_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    health_url: str
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int
    update_mask: _field_mask_pb2.FieldMask
    etag: str
    def __init__(self, id: _Optional[str] = ..., health_url: _Optional[str] = ..., staleness_threshold_s: _Optional[int] = ..., check_interval_s: _Optional[int] = ..., failure_threshold: _Optional[int] = ..., success_threshold: _Optional[int] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class UpdateHealthSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: HealthSource
    def __init__(self, source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class DeleteHealthSourceRequest(_message.Message):
    __slots__ = ("id", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    etag: str
    def __init__(self, id: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class DeleteHealthSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: HealthSource
    def __init__(self, source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class ReportHeartbeatRequest(_message.Message):
    __slots__ = ("service_id",)
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    def __init__(self, service_id: _Optional[str] = ...) -> None: ...

class ReportHeartbeatResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: HealthSource
    def __init__(self, source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class RecordCheckResultRequest(_message.Message):
    __slots__ = ("source_id", "status", "details")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    status: HealthStatus
    details: _struct_pb2.Struct
    def __init__(self, source_id: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RecordCheckResultResponse(_message.Message):
    __slots__ = ("result", "source")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    result: CheckResult
    source: HealthSource
    def __init__(self, result: _Optional[_Union[CheckResult, _Mapping]] = ..., source: _Optional[_Union[HealthSource, _Mapping]] = ...) -> None: ...

class ListCheckResultsRequest(_message.Message):
    __slots__ = ("source_id", "start_time", "end_time", "page_size", "page_token")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, source_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCheckResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPlatformHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SourceHealth(_message.Message):
    __slots__ = ("source_id", "service_id", "status", "stale", "last_heartbeat_time", "last_check_time", "last_details", "status_time", "effective_status")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_DETAILS_FIELD_NUMBER: _ClassVar[int]
    STATUS_TIME_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_STATUS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    service_id: str
    status: HealthStatus
    stale: bool
    last_heartbeat_time: _timestamp_pb2.Timestamp
    last_check_time: _timestamp_pb2.Timestamp
    last_details: _struct_pb2.Struct
    status_time: _timestamp_pb2.Timestamp
    effective_status: HealthStatus
    def __init__(self, source_id: _Optional[str] = ..., service_id: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., stale: _Optional[bool] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., status_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effective_status: _Optional[_Union[HealthStatus, str]] = ...) -> None: ...

class GetPlatformHealthResponse(_message.Message):
    __slots__ = ("status", "sources", "evaluate_time")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_TIME_FIELD_NUMBER: _ClassVar[int]
    status: HealthStatus
    sources: _containers.RepeatedCompositeFieldContainer[SourceHealth]
    evaluate_time: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[HealthStatus, str]] = ..., sources: _Optional[_Iterable[_Union[SourceHealth, _Mapping]]] = ..., evaluate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
