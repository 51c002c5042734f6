"""OpenFeature's error codes, the one list of them this service sends.

A flagd-protocol error carries its code as the ErrorInfo ``reason`` of the gRPC status
(the providers map it back to the SDK's ErrorCode); OFREP sends it as ``errorCode``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    # The context's tenant or node attribute is not a ULID / node id, or not a string.
    INVALID_CONTEXT = "INVALID_CONTEXT"
    # A flag was asked about with no tenant in the context.
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    # OFREP only: the request body is not a JSON evaluation context.
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"
