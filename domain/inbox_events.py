"""The events this service consumes from the bus, and how a message becomes one.

Pure rules, no NATS and no SQL: server/bus/inbox.py hands each message's subject and
body here and applies the event it gets back; a message this module refuses is recorded
as malformed with the reason given, and never applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from domain.errors import InvalidArgument
from domain.health import check_service_id
from domain.ids import check_ulid

TENANT_DELETED = "identity.tenant.deleted"
HEARTBEAT_PREFIX = "platform.heartbeat."
# The inbox stream's subjects (they must not overlap the relay's platform_admin.>).
SUBJECTS = (TENANT_DELETED, HEARTBEAT_PREFIX + ">")
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class TenantDeleted:
    tenant_id: str


@dataclass(frozen=True)
class Heartbeat:
    service_id: str


Event = TenantDeleted | Heartbeat


def subject_label(subject: str) -> str:
    """The subject as a metric label: one value for every heartbeat, whatever the service."""
    if subject.startswith(HEARTBEAT_PREFIX):
        return HEARTBEAT_PREFIX + "*"
    return subject if subject == TENANT_DELETED else "other"


def parse(subject: str, body: bytes) -> Event:
    """The event a message carries; InvalidArgument (with the reason) when it is malformed."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidArgument.field("body", f"is larger than {MAX_BODY_BYTES} bytes")
    if subject == TENANT_DELETED:
        document = _json_object(body)
        tenant_id = document.get("tenant_id")
        if not isinstance(tenant_id, str):
            raise InvalidArgument.field("tenant_id", "is required (a string)")
        return TenantDeleted(check_ulid("tenant_id", tenant_id))
    if subject.startswith(HEARTBEAT_PREFIX):
        if body.strip():
            _json_object(body)  # empty or a JSON object; its content is not used
        return Heartbeat(check_service_id("service_id", subject[len(HEARTBEAT_PREFIX) :]))
    raise InvalidArgument.field("subject", f"{subject!r} is not an event this service consumes")


def _json_object(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument.field("body", "is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidArgument.field("body", "must be a JSON object")
    return document
