"""platform_admin.v1.HealthService: thin servicer over storage/health.py.

Each method validates the request (domain/health.py), calls storage, converts the result.
Which roles may call which RPC is server/security/policy.py's table; the one data rule decided
here is that a caller acting as a service reports only for its own service_id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import health_pb2, health_pb2_grpc

from domain import health as rules
from domain import paging
from domain.errors import Collector, InvalidArgument, PermissionDenied
from domain.etags import format_etag, parse_etag
from domain.health import AllowList, Status
from domain.ids import HEALTH_CHECK_RESULT, HEALTH_SOURCE, check_ulid, strip_prefix, with_prefix
from server.rpc.convert import timestamp
from server.security import principal as principal_ctx
from storage import health
from storage.db import Database
from storage.health import Registration, ResultRow, SourceRow

STATUS_TO_PROTO = {
    Status.HEALTHY: health_pb2.HEALTH_STATUS_HEALTHY,
    Status.DEGRADED: health_pb2.HEALTH_STATUS_DEGRADED,
    Status.UNHEALTHY: health_pb2.HEALTH_STATUS_UNHEALTHY,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def _status(value: str | Status | None) -> health_pb2.HealthStatus:
    if value is None:
        return health_pb2.HEALTH_STATUS_UNSPECIFIED
    return STATUS_TO_PROTO[Status(value)]


def to_struct(details: dict[str, Any] | None) -> Struct | None:
    if details is None:
        return None
    struct = Struct()
    struct.update(details)
    return struct


def _from_value(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return _from_list(value.list_value)
    if kind == "number_value":
        number = value.number_value
        # Integral numbers read back as ints, as the service sent them in JSON.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _from_list(values: ListValue) -> list[Any]:
    return [_from_value(v) for v in values.values]


def from_struct(struct: Struct) -> dict[str, Any]:
    return {key: _from_value(value) for key, value in struct.fields.items()}


def source_to_proto(row: SourceRow) -> health_pb2.HealthSource:
    return health_pb2.HealthSource(
        id=with_prefix(HEALTH_SOURCE, row.id),
        **row.registered(),
        last_heartbeat_time=timestamp(row.last_heartbeat_at),
        status=_status(row.status),
        status_time=timestamp(row.status_since),
        last_check_time=timestamp(row.last_check_at),
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        etag=format_etag(row.version),
    )


def result_to_proto(row: ResultRow) -> health_pb2.CheckResult:
    return health_pb2.CheckResult(
        id=with_prefix(HEALTH_CHECK_RESULT, row.id),
        source_id=with_prefix(HEALTH_SOURCE, row.source_id),
        status=_status(row.status),
        check_time=timestamp(row.checked_at),
        details=to_struct(row.details or {}),
    )


def _source_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument.field(field, "is required (an id starting with 'hsr_')")
    return strip_prefix(field, HEALTH_SOURCE, value)


def _time(field: str, message: Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(field, "is not a valid timestamp") from None


def _only_service_id() -> str | None:
    """The service_id a caller acting as a service is limited to; None for admins."""
    who = principal_ctx.current()
    if who.has(principal_ctx.PLATFORM_ADMIN) or not who.has(principal_ctx.SERVICE):
        return None
    if not who.service_id:
        raise PermissionDenied("the caller's token names no service_id")
    return who.service_id


class HealthServicer(health_pb2_grpc.HealthServiceServicer):
    def __init__(
        self, db: Database, allow_list: AllowList, record_min_interval_s: float = 1.0
    ) -> None:
        self.db = db
        self.allow_list = allow_list
        # Per source, the least time between two pushed results (0: no limit).
        self.record_min_interval_s = record_min_interval_s

    def _actor(self) -> str | None:
        return principal_ctx.current().subject

    def _registration(
        self,
        request: health_pb2.CreateHealthSourceRequest | health_pb2.UpdateHealthSourceRequest,
        fields: tuple[str, ...] = rules.MUTABLE_FIELDS,
    ) -> Registration:
        """Validates the named fields (all on create); every violation is reported at once."""
        errors = Collector()
        url = request.health_url
        if "health_url" in fields:
            try:
                target = rules.parse_health_url("health_url", request.health_url)
                rules.check_target_allowed("health_url", target, self.allow_list)
            except InvalidArgument as exc:
                errors.violations.extend(exc.violations)
        registration = Registration(
            health_url=url,
            staleness_threshold_s=rules.check_bounded(
                errors,
                "staleness_threshold_s",
                request.staleness_threshold_s,
                rules.STALENESS_THRESHOLD_S,
            ),
            check_interval_s=rules.check_bounded(
                errors, "check_interval_s", request.check_interval_s, rules.CHECK_INTERVAL_S
            ),
            failure_threshold=rules.check_bounded(
                errors, "failure_threshold", request.failure_threshold, rules.FAILURE_THRESHOLD
            ),
            success_threshold=rules.check_bounded(
                errors, "success_threshold", request.success_threshold, rules.SUCCESS_THRESHOLD
            ),
        )
        # Only the fields being changed are judged: an unchanged zero is not an error.
        errors.violations = [v for v in errors.violations if v.field in fields]
        errors.raise_if_any()
        return registration

    async def CreateHealthSource(
        self, request: health_pb2.CreateHealthSourceRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.CreateHealthSourceResponse:
        errors = Collector()
        try:
            rules.check_service_id("service_id", request.service_id)
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
        try:
            registration = self._registration(request)
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
        errors.raise_if_any()
        row = await health.create(self.db, request.service_id, registration, self._actor())
        return health_pb2.CreateHealthSourceResponse(source=source_to_proto(row))

    async def GetHealthSource(
        self, request: health_pb2.GetHealthSourceRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.GetHealthSourceResponse:
        row = await health.get(self.db, _source_id("id", request.id))
        return health_pb2.GetHealthSourceResponse(source=source_to_proto(row))

    async def ListHealthSources(
        self, request: health_pb2.ListHealthSourcesRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ListHealthSourcesResponse:
        limit = paging.page_size(request.page_size)
        position = paging.decode(request.page_token, "health_sources", [], 1)
        after = str(position[0]) if position else None
        rows = await health.list_sources(self.db, after, limit + 1)
        return health_pb2.ListHealthSourcesResponse(
            sources=[source_to_proto(r) for r in rows[:limit]],
            next_page_token=paging.next_token(
                rows, limit, "health_sources", [], lambda r: [r.service_id]
            ),
        )

    async def UpdateHealthSource(
        self, request: health_pb2.UpdateHealthSourceRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.UpdateHealthSourceResponse:
        source_id = _source_id("id", request.id)
        fields = rules.check_update_mask("update_mask", request.update_mask.paths)
        registration = self._registration(request, fields)
        expected = parse_etag("etag", request.etag)
        row = await health.update(self.db, source_id, registration, fields, expected, self._actor())
        return health_pb2.UpdateHealthSourceResponse(source=source_to_proto(row))

    async def DeleteHealthSource(
        self, request: health_pb2.DeleteHealthSourceRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.DeleteHealthSourceResponse:
        source_id = _source_id("id", request.id)
        expected = parse_etag("etag", request.etag)
        row = await health.delete(self.db, source_id, expected, self._actor())
        return health_pb2.DeleteHealthSourceResponse(source=source_to_proto(row))

    async def ReportHeartbeat(
        self, request: health_pb2.ReportHeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ReportHeartbeatResponse:
        own = _only_service_id()
        service_id = request.service_id or own or ""
        rules.check_service_id("service_id", service_id)
        if own is not None and service_id != own:
            raise PermissionDenied(f"service {own!r} may report heartbeats only for itself")
        row = await health.heartbeat(self.db, service_id)
        return health_pb2.ReportHeartbeatResponse(source=source_to_proto(row))

    async def RecordCheckResult(
        self, request: health_pb2.RecordCheckResultRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.RecordCheckResultResponse:
        errors = Collector()
        source_id = ""
        try:
            source_id = _source_id("source_id", request.source_id)
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
        status = STATUS_FROM_PROTO.get(request.status)
        if status is None:
            errors.add(
                "status",
                "is required: HEALTH_STATUS_HEALTHY, HEALTH_STATUS_DEGRADED or"
                " HEALTH_STATUS_UNHEALTHY",
            )
        details: dict[str, Any] = {}
        try:
            details = rules.check_details("details", from_struct(request.details))
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
        errors.raise_if_any()
        assert status is not None
        result, row = await health.record_result(
            self.db,
            source_id,
            status,
            details,
            only_service_id=_only_service_id(),
            actor=self._actor(),
            min_push_interval_s=self.record_min_interval_s,
        )
        return health_pb2.RecordCheckResultResponse(
            result=result_to_proto(result), source=source_to_proto(row)
        )

    async def ListCheckResults(
        self, request: health_pb2.ListCheckResultsRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ListCheckResultsResponse:
        source_id = _source_id("source_id", request.source_id)
        limit = paging.page_size(request.page_size)
        start = _time("start_time", request.start_time, request.HasField("start_time"))
        end = _time("end_time", request.end_time, request.HasField("end_time"))
        if start is not None and end is not None and start > end:
            raise InvalidArgument.field("start_time", "must not be after end_time")
        filters = [
            source_id,
            start.isoformat() if start else None,
            end.isoformat() if end else None,
        ]
        position = paging.decode(request.page_token, "check_results", filters, 2)
        after = None
        if position:
            try:
                after = (
                    datetime.fromisoformat(str(position[0])),
                    check_ulid("page_token", str(position[1])),
                )
            except (ValueError, InvalidArgument):
                raise InvalidArgument.field(
                    "page_token", "is not a token issued for this request"
                ) from None
        rows = await health.list_results(
            self.db, source_id, start=start, end=end, after=after, limit=limit + 1
        )
        return health_pb2.ListCheckResultsResponse(
            results=[result_to_proto(r) for r in rows[:limit]],
            next_page_token=paging.next_token(
                rows, limit, "check_results", filters, lambda r: [r.checked_at.isoformat(), r.id]
            ),
        )

    async def GetPlatformHealth(
        self, request: health_pb2.GetPlatformHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.GetPlatformHealthResponse:
        rows, now = await health.platform(self.db)
        response = health_pb2.GetPlatformHealthResponse(evaluate_time=timestamp(now))
        effective: list[Status | None] = []
        for row in rows:
            status = Status(row.status) if row.status else None
            stale = rules.is_stale(row.last_heartbeat_at, row.staleness_threshold_s, now)
            contributes = rules.effective_status(status, stale)
            effective.append(contributes)
            response.sources.add(
                source_id=with_prefix(HEALTH_SOURCE, row.id),
                service_id=row.service_id,
                status=_status(status),
                stale=stale,
                last_heartbeat_time=timestamp(row.last_heartbeat_at),
                last_check_time=timestamp(row.last_check_at),
                last_details=to_struct(row.last_details),
                status_time=timestamp(row.status_since),
                effective_status=_status(contributes),
            )
        response.status = _status(rules.worst(effective))
        return response
