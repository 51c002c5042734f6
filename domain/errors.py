"""Domain errors: the one vocabulary both storage and server speak.

Each class names the gRPC status it becomes (see server/rpc/errors.py, the one mapping);
storage and pure rules raise these and never build transport errors themselves.
Messages are written for the caller: they name the field and the reason, and never
contain SQL, stack traces or data the caller may not see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request and why it was rejected."""

    field: str
    description: str


class DomainError(Exception):
    """Base class. ``reason`` is a stable UPPER_SNAKE identifier for ErrorInfo."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(DomainError):
    """The request is malformed; nothing was written."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class Aborted(DomainError):
    """A conditional write lost: the etag no longer matches."""

    reason = "ETAG_MISMATCH"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class Unavailable(DomainError):
    """The database (or another dependency) cannot be reached; retry later."""

    reason = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"


class Collector:
    """Gathers every violation of a request so the caller sees them all at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def check(self, check: Callable[[str, V], T], field: str, value: V, fallback: T) -> T:
        """``check(field, value)``; when it refuses, its violations are kept and ``fallback``
        returned, so the other fields are still checked and every bad one is reported."""
        try:
            return check(field, value)
        except InvalidArgument as exc:
            self.violations.extend(exc.violations)
            return fallback

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
