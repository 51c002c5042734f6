"""Etags: the row version, shown as an opaque string.

Every config and flag row carries a ``version`` bumped on each change; a client passes
the etag back to make a write conditional, and a stale one makes the write ABORTED.
"""

from __future__ import annotations

from domain.errors import Aborted, InvalidArgument

_MAX_VERSION = 2**63 - 1


def format_etag(version: int) -> str:
    return str(version)


def parse_etag(field: str, etag: str) -> int | None:
    """None for an empty etag (unconditional write), else the version it names."""
    if not etag:
        return None
    body = etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag
    if not body.isascii() or not body.isdigit() or len(body) > 19 or int(body) > _MAX_VERSION:
        raise InvalidArgument.field(field, "is not an etag issued by this service")
    return int(body)


def check_etag(expected: int | None, actual: int, what: str) -> None:
    if expected is not None and expected != actual:
        raise Aborted(f"{what} was changed by someone else (etag mismatch); re-read and retry")
