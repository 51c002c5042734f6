"""The access log: one structured INFO line per RPC, from the call pipeline.

Each line carries the method, status code, duration, principal and a request id (the
caller's ``x-request-id`` metadata, or a generated one). Successful Evaluate*/Resolve*
calls (the hot read path, see QUIET_WHEN_OK) are not logged unless
PLATFORM_ADMIN_ACCESS_LOG=all: the metrics count them.
Nothing else from the metadata is read, so tokens (``authorization``) and other secrets
never reach the log.

With PLATFORM_ADMIN_LOG_FORMAT=json the fields are JSON keys; with text they read
``rpc method=... status=... duration_ms=... principal=... request_id=...``.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from typing import Any

import grpc

from server.ops.metrics import code_name
from server.rpc.observers import FinishedCall

log = logging.getLogger("platform_admin.access")

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128
# A request id is echoed into logs: keep it to characters that cannot forge a log line.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")
# Generated ids: a random per-process prefix and a counter; unique across processes and
# restarts for all practical purposes, and ~20x cheaper per call than a ULID.
_PREFIX = secrets.token_hex(6)
_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}-{next(_counter):x}"


def request_id(metadata: Any) -> str:
    """The caller's x-request-id, made safe for logs, or a new id when absent or empty."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            cleaned = _UNSAFE.sub("_", text[:_MAX_REQUEST_ID])
            if cleaned:
                return cleaned
    return new_request_id()


# The hot read path: services call these on their own request paths, thousands of times a
# second. A line per successful call would cost about as much as the call itself (it
# measured ~15 % of a process's throughput); these calls are counted and timed by the
# metrics instead, and their failures are still logged.
QUIET_WHEN_OK = frozenset(
    {
        "/platform_admin.v1.FlagService/EvaluateFlag",
        "/platform_admin.v1.FlagService/EvaluateFlags",
        "/platform_admin.v1.ConfigService/ResolveConfig",
        "/platform_admin.v1.ConfigService/ResolveConfigs",
    }
)


class AccessLog:
    """Call pipeline observer writing the access log."""

    def __init__(self, log_format: str = "text", hot_reads: bool = False) -> None:
        self.json = log_format == "json"
        # PLATFORM_ADMIN_ACCESS_LOG=all: a line for every call, hot reads included.
        self.quiet_when_ok = frozenset() if hot_reads else QUIET_WHEN_OK

    def on_call_done(self, call: FinishedCall) -> None:
        method, code, principal = call.method, call.code, call.principal
        if code is grpc.StatusCode.OK and method in self.quiet_when_ok:
            return
        if not log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "method": method.lstrip("/"),
            "status": code_name(code),
            "duration_ms": round(call.seconds * 1000, 3),
            # "-": the call was refused before a principal was known.
            "principal": "-"
            if principal is None
            else principal.subject or principal.service_id or "anonymous",
            "request_id": request_id(call.metadata),
        }
        if principal is not None and principal.tenant_id:
            fields["tenant_id"] = principal.tenant_id
        if self.json:
            log.info("rpc", extra={"fields": fields})
        else:
            log.info("rpc %s", " ".join(f"{k}={v}" for k, v in fields.items()))
