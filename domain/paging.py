"""Page sizes and opaque page tokens.

A token carries the keyset position of the last row returned plus a fingerprint of the
request's filters, so a token cannot be replayed against other filters, and anything
that does not decode to exactly that shape is rejected as INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from domain.errors import InvalidArgument
from domain.text import urlsafe_b64decode_strict

R = TypeVar("R")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_LENGTH = 2048


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(kind: str, filters: Any) -> str:
    raw = json.dumps([kind, filters], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode(kind: str, filters: Any, position: list[Any]) -> str:
    body = json.dumps({"f": _fingerprint(kind, filters), "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def next_token(
    rows: Sequence[R], limit: int, kind: str, filters: Any, position: Callable[[R], list[Any]]
) -> str:
    """The next page's token ("" on the last page) for ``rows`` read with ``limit + 1``."""
    if len(rows) <= limit:
        return ""
    return encode(kind, filters, position(rows[limit - 1]))


def decode(token: str, kind: str, filters: Any, arity: int) -> list[Any] | None:
    """The position in ``token``, or None for an empty token (first page)."""
    if not token:
        return None
    bad = InvalidArgument.field("page_token", "is not a token issued for this request")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise bad
    try:
        body = json.loads(urlsafe_b64decode_strict(token))
    except (ValueError, UnicodeError):
        raise bad from None
    if not isinstance(body, dict) or body.get("f") != _fingerprint(kind, filters):
        raise bad
    position = body.get("p")
    if (
        not isinstance(position, list)
        or len(position) != arity
        or not all(isinstance(p, str | int) and not isinstance(p, bool) for p in position)
    ):
        raise bad
    return position
