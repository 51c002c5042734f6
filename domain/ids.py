"""Identifiers: bare ULIDs in the database, prefixed ids (``hsr_…``) in the API.

The prefix is added on the way out and checked and stripped on the way in, so an id
of one kind can never be used where another is expected.
"""

from __future__ import annotations

import re

from ulid import ULID

from domain.errors import InvalidArgument

# Crockford base32, first character 0-7 so the value fits in 128 bits.
_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")

HEALTH_SOURCE = "hsr"
HEALTH_CHECK_RESULT = "hcr"
CONFIG_HISTORY = "cph"


def new_ulid() -> str:
    """A fresh ULID as its 26-character canonical string."""
    return str(ULID())


def is_ulid(value: str) -> bool:
    return _ULID_RE.fullmatch(value) is not None


def check_ulid(field: str, value: str) -> str:
    """Returns the canonical (upper-case) ULID or raises InvalidArgument naming ``field``."""
    upper = value.upper()
    if not _ULID_RE.fullmatch(upper):
        raise InvalidArgument.field(field, "must be a 26-character ULID")
    return upper


def with_prefix(prefix: str, bare: str) -> str:
    return f"{prefix}_{bare}"


def strip_prefix(field: str, prefix: str, value: str) -> str:
    """``hsr_01H…`` → ``01H…``; a missing or different prefix is INVALID_ARGUMENT."""
    head, sep, tail = value.partition("_")
    if not sep or head != prefix:
        raise InvalidArgument.field(field, f"must be an id starting with '{prefix}_'")
    return check_ulid(field, tail)
