"""What the client raises, and the server's reason read from a failed call.

The server puts a ``google.rpc.ErrorInfo`` in every error's status details; its
``reason`` (``CURSOR_EXPIRED``, ``SUBSCRIBER_TOO_SLOW``, ``SERVER_SHUTTING_DOWN``,
token reasons, ...) is what decides how the client reacts, so it is parsed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2


class UnknownKey(LookupError):
    """A flag or config key the local copy has never seen (and no default was given)."""


@dataclass(frozen=True)
class ServerError:
    """Why the server refused a call: status code, ErrorInfo reason, message."""

    code: grpc.StatusCode
    reason: str
    message: str

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


def server_error(error: grpc.aio.AioRpcError) -> ServerError:
    """The code, ErrorInfo reason and message of a failed call."""
    reason = ""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            continue
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return ServerError(error.code(), reason, error.details() or "")
