"""HealthService calls a service makes about itself: heartbeats and check results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2
from platform_admin.v1 import health_pb2, health_pb2_grpc

from platform_admin_client.connection import Connection
from platform_admin_client.errors import server_error

log = logging.getLogger("platform_admin_client")

_STATUSES = {
    "HEALTHY": health_pb2.HEALTH_STATUS_HEALTHY,
    "DEGRADED": health_pb2.HEALTH_STATUS_DEGRADED,
    "UNHEALTHY": health_pb2.HEALTH_STATUS_UNHEALTHY,
}


def status_value(status: str | int) -> health_pb2.HealthStatus:
    """``"HEALTHY"``, ``"HEALTH_STATUS_HEALTHY"`` or the enum's number, as the enum."""
    if isinstance(status, int):
        if status not in _STATUSES.values():
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        return health_pb2.HealthStatus(status)
    found = _STATUSES.get(status.upper().removeprefix("HEALTH_STATUS_"))
    if found is None:
        raise ValueError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
    return found


class Heartbeats:
    """``ReportHeartbeat`` for one service every ``every_s`` seconds until stopped."""

    def __init__(self, connection: Connection, service_id: str, every_s: float, deadline_s: float):
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.connection = connection
        self.service_id = service_id
        self.every_s = every_s
        self.deadline_s = deadline_s
        self.sent = 0
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                stub = health_pb2_grpc.HealthServiceStub(self.connection.channel())
                await stub.ReportHeartbeat(
                    health_pb2.ReportHeartbeatRequest(service_id=self.service_id),
                    metadata=await self.connection.metadata(),
                    timeout=self.deadline_s,
                )
                self.sent += 1
                self.last_error = None
            except grpc.aio.AioRpcError as exc:
                self.last_error = str(server_error(exc))
                log.warning("heartbeat for %s failed: %s", self.service_id, self.last_error)
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    self.connection.rotate()
            await asyncio.sleep(self.every_s)


async def record_check_result(
    connection: Connection,
    source_id: str,
    status: str | int,
    details: Mapping[str, Any] | None,
    deadline_s: float,
) -> health_pb2.RecordCheckResultResponse:
    body = struct_pb2.Struct()
    if details:
        body.update(dict(details))
    stub = health_pb2_grpc.HealthServiceStub(connection.channel())
    response: health_pb2.RecordCheckResultResponse = await stub.RecordCheckResult(
        health_pb2.RecordCheckResultRequest(
            source_id=source_id, status=status_value(status), details=body
        ),
        metadata=await connection.metadata(),
        timeout=deadline_s,
    )
    return response
