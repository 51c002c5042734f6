"""Feature-flag rules: key and description checks, tenant overrides, and evaluation.

Everything here is pure (no gRPC, no SQL), so the rules that decide what a tenant sees
are tested on their own, including property tests over arbitrary override sequences.
Storage applies overrides with :func:`apply_override` under a row lock, so the lists in
the database are always exactly what these rules produce.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from domain.errors import InvalidArgument
from domain.text import has_prose_control

KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,99}$"
_KEY_RE = re.compile(KEY_PATTERN)
MAX_DESCRIPTION = 2_000
MAX_EVALUATE_KEYS = 1_000

# Fields UpdateFlag may change, and the ones a mask may name but never change there.
MUTABLE_FIELDS = frozenset({"description", "default_enabled"})
_IMMUTABLE_FIELDS = {
    "key": "is immutable",
    "enabled_tenant_ids": "is changed with SetTenantOverride",
    "disabled_tenant_ids": "is changed with SetTenantOverride",
    "archived": "is changed with ArchiveFlag / UnarchiveFlag",
    "create_time": "is set by the server",
    "update_time": "is set by the server",
    "etag": "is set by the server",
}


_MASKABLE = "UpdateFlag changes only description and default_enabled"


class Override(StrEnum):
    """What SetTenantOverride does with one tenant."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    INHERIT = "INHERIT"


class Reason(StrEnum):
    """Why an evaluation gave its answer."""

    DEFAULT = "DEFAULT"
    TENANT_ENABLED = "TENANT_ENABLED"
    TENANT_DISABLED = "TENANT_DISABLED"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True)
class Evaluation:
    enabled: bool
    reason: Reason


def check_key(field: str, key: str) -> str:
    if not key:
        raise InvalidArgument.field(field, "is required")
    if not _KEY_RE.fullmatch(key):  # fullmatch: "$" alone accepts a trailing newline
        shown = key if len(key) <= 100 else key[:100] + "…"
        raise InvalidArgument.field(
            field, f"'{shown}' must match {KEY_PATTERN} (lower-case letter first, at most 100)"
        )
    return key


def check_description(field: str, description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument.field(field, f"must be at most {MAX_DESCRIPTION} characters")
    if has_prose_control(description):
        raise InvalidArgument.field(
            field, "must not contain control characters (newline and tab are allowed)"
        )
    return description


def check_update_mask(field: str, paths: Iterable[str]) -> frozenset[str]:
    """The fields an UpdateFlag changes; an empty mask means every mutable field."""
    named = list(paths)
    if not named:
        return MUTABLE_FIELDS
    for path in named:
        if path in MUTABLE_FIELDS:
            continue
        why = _IMMUTABLE_FIELDS.get(path)
        if why is not None:
            raise InvalidArgument.field(field, f"'{path}' {why}; {_MASKABLE}")
        shown = path if len(path) <= 100 else path[:100] + "…"
        raise InvalidArgument.field(field, f"'{shown}' is not a field of Flag; {_MASKABLE}")
    return frozenset(named)


def apply_override(
    enabled: Iterable[str], disabled: Iterable[str], tenant_id: str, override: Override
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (enabled, disabled) lists after ``override`` for ``tenant_id``: sorted, unique.

    The tenant leaves both lists first, then joins the one the override names, so it is
    never in both whatever the lists held before.
    """
    new_enabled = {t for t in enabled if t != tenant_id}
    new_disabled = {t for t in disabled if t != tenant_id}
    if override is Override.ENABLED:
        new_enabled.add(tenant_id)
    elif override is Override.DISABLED:
        new_disabled.add(tenant_id)
    return tuple(sorted(new_enabled)), tuple(sorted(new_disabled))


def evaluate(
    *,
    default_enabled: bool,
    enabled_tenant_ids: Collection[str],
    disabled_tenant_ids: Collection[str],
    archived: bool,
    tenant_id: str,
) -> Evaluation:
    """Archived → off; tenant disabled → off; tenant enabled → on; otherwise the default.

    Disabled wins over enabled, so even lists that broke the "never both" rule fail safe.
    """
    if archived:
        return Evaluation(False, Reason.ARCHIVED)
    if tenant_id in disabled_tenant_ids:
        return Evaluation(False, Reason.TENANT_DISABLED)
    if tenant_id in enabled_tenant_ids:
        return Evaluation(True, Reason.TENANT_ENABLED)
    return Evaluation(default_enabled, Reason.DEFAULT)
