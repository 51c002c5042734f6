"""Assertions on gRPC errors as a client sees them: status, message, rich details."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

TENANT_A = "01JA0000000000000000000AAA"
TENANT_B = "01JB0000000000000000000BBB"


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    reason: str
    fields: dict[str, str]


def failure_of(error: grpc.aio.AioRpcError) -> RpcFailure:
    reason, fields = "", {}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = {v.field: v.description for v in bad.field_violations}
    return RpcFailure(error.code(), error.details() or "", reason, fields)


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, field: str | None = None
) -> RpcFailure:
    """Awaits ``call``, asserts it failed with ``code`` (and names ``field``), returns details."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        assert failure.code == code, f"expected {code}, got {failure.code}: {failure.message}"
        if field is not None:
            assert field in failure.fields, f"{field} not in violations {failure.fields}"
            assert field in failure.message
        lowered = failure.message.lower()
        for leak in ("select ", "insert ", "update ", "traceback", "psycopg"):
            assert leak not in lowered, f"message leaks internals: {failure.message}"
        return failure
    raise AssertionError(f"expected {code}, but the call succeeded")
