"""Domain errors as HTTP answers: the gRPC status a call would get, its HTTP status, JSON body.

The status is decided once, by server/rpc/errors.py (domain error -> gRPC code); this module
only translates that code to HTTP (the usual google.rpc mapping), so an HTTP caller and a
gRPC caller are always told the same thing. Body::

    {"error": {"code": "INVALID_ARGUMENT", "httpStatus": 400, "message": "...",
               "reason": "INVALID_ARGUMENT",
               "fieldViolations": [{"field": "value", "description": "..."}]}}

INTERNAL never carries the original message (it is logged, not returned).
"""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web

from domain import errors as e
from server.rpc.errors import status_code_of

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# For errors that never were domain errors (unknown path, wrong method, body too large).
GRPC_CODE_OF_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def http_status_of(error: e.DomainError) -> int:
    return HTTP_STATUS.get(status_code_of(error), 500)


def error_body(error: e.DomainError) -> dict[str, Any]:
    code = status_code_of(error)
    internal = code is grpc.StatusCode.INTERNAL
    body: dict[str, Any] = {
        "code": code.name,
        "httpStatus": HTTP_STATUS.get(code, 500),
        "message": "internal error" if internal else error.message,
        "reason": "INTERNAL" if internal else error.reason,
    }
    if isinstance(error, e.InvalidArgument):
        body["fieldViolations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    return {"error": body}


def error_response(error: e.DomainError) -> web.Response:
    """The JSON answer for ``error``; 401 also says which scheme to use."""
    status = http_status_of(error)
    headers = {"WWW-Authenticate": 'Bearer realm="platform-admin"'} if status == 401 else None
    return web.json_response(error_body(error), status=status, headers=headers)


def plain_http_error(status: int, message: str) -> web.Response:
    """A JSON body for an HTTP-level refusal (no route, wrong method) in the same shape."""
    code = GRPC_CODE_OF_HTTP.get(status, grpc.StatusCode.UNKNOWN)
    body = {"code": code.name, "httpStatus": status, "message": message, "reason": code.name}
    return web.json_response({"error": body}, status=status)
