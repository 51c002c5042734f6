"""What the call pipeline tells its observers (metrics, the access log) about each call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from server.security.principal import Principal


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """One call as it ended: the observers' whole view of it."""

    method: str
    code: grpc.StatusCode
    seconds: float
    # None: the call was refused before a principal was known.
    principal: Principal | None
    # The call's invocation metadata (the access log reads x-request-id from it).
    metadata: Any


class CallObserver(Protocol):
    """Told when each call ends; may also define ``on_call_start(method)`` (in-flight gauges)."""

    def on_call_done(self, call: FinishedCall) -> None: ...
