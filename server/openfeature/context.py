"""Evaluation context → the tenant and node an OpenFeature question is about.

OpenFeature callers send a free-form context; platform-admin reads three attributes of
it and ignores the rest (so a large context costs nothing beyond its parsing):

* ``tenantId``, else ``targetingKey``: the tenant, a ULID (upper-cased like every tenant id);
* ``nodeId``: selects NODE-scope config rows.

A tenant admin may only ask about its own tenant, as on platform_admin.v1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.config_keys import check_node_id
from domain.errors import InvalidArgument, PermissionDenied
from domain.ids import check_ulid
from server.openfeature.codes import ErrorCode
from server.security import principal as principal_ctx

TENANT_ATTRIBUTE = "tenantId"
TARGETING_KEY = "targetingKey"
NODE_ATTRIBUTE = "nodeId"


@dataclass(frozen=True, slots=True)
class Target:
    """Whom an evaluation is for: the tenant (None if the context names none) and node."""

    tenant_id: str | None
    node_id: str | None


def context_error(
    attribute: str, description: str, reason: str = ErrorCode.INVALID_CONTEXT
) -> InvalidArgument:
    error = InvalidArgument.field(attribute, description)
    error.reason = reason
    return error


def missing_tenant() -> InvalidArgument:
    return context_error(
        TENANT_ATTRIBUTE,
        f"is required for flags: set {TENANT_ATTRIBUTE} or {TARGETING_KEY} to the tenant's ULID",
        ErrorCode.TARGETING_KEY_MISSING,
    )


def _string(attribute: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise context_error(attribute, "must be a string")
    return value


def _checked(check: Callable[[str, str], str], attribute: str, value: str) -> str:
    """``check(attribute, value)``, its refusal reported as OpenFeature's INVALID_CONTEXT."""
    try:
        return check(attribute, value)
    except InvalidArgument as exc:
        exc.reason = ErrorCode.INVALID_CONTEXT
        raise


def target_of(context: Mapping[str, Any]) -> Target:
    """The tenant and node ``context`` names; INVALID_ARGUMENT naming the bad attribute."""
    attribute = TENANT_ATTRIBUTE
    raw = _string(TENANT_ATTRIBUTE, context.get(TENANT_ATTRIBUTE))
    if raw is None:
        attribute = TARGETING_KEY
        raw = _string(TARGETING_KEY, context.get(TARGETING_KEY))
    tenant = None if raw is None else _checked(check_ulid, attribute, raw)
    node = _string(NODE_ATTRIBUTE, context.get(NODE_ATTRIBUTE))
    if node is not None:
        node = _checked(check_node_id, NODE_ATTRIBUTE, node)
    who = principal_ctx.current()
    if who.is_tenant_scoped and tenant != who.tenant_id:
        raise PermissionDenied("tenant admins may evaluate for their own tenant only")
    return Target(tenant, node)
