"""Change events: the one definition of what the outbox carries, typed.

Every change to a flag, a config row or a health source is written to the outbox as one
of the three events below, in the transaction of the change (storage/outbox.py), given a
``seq`` after commit (storage/stream.py), fanned out once per process
(server/changes/feed.py) and consumed by the read model, the watch streams and whatever
comes next. Each event carries the full new state, so a consumer never needs a second read.

``to_payload`` / ``from_payload`` are the only code that writes or reads the JSON shape
of an outbox row (payload and headers); the shape is the one stored since the first
release, so rows already in an outbox keep decoding (tests/test_change_events.py holds
rows written by that code). Nothing else in the service handles a payload as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from domain.config_keys import ConfigValue, Scope
from domain.health import Status

FLAG_CHANGED = "platform_admin.flag.changed"
CONFIG_CHANGED = "platform_admin.config.changed"
HEALTH_CHANGED = "platform_admin.health.changed"
SUBJECTS = (FLAG_CHANGED, CONFIG_CHANGED, HEALTH_CHANGED)

_SCOPES = {s.value: s for s in Scope}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class FlagChanged:
    """A flag's full state after a change (or as a snapshot row)."""

    subject: ClassVar[str] = FLAG_CHANGED

    key: str
    description: str
    default_enabled: bool
    enabled_tenant_ids: tuple[str, ...]  # sorted
    disabled_tenant_ids: tuple[str, ...]  # sorted
    archived: bool
    version: int
    create_time: datetime
    update_time: datetime

    @property
    def identity(self) -> str:
        return self.key

    @property
    def tenant_id(self) -> str | None:
        """The outbox row's tenant column: a flag names many tenants, so none."""
        return None

    def to_payload(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "description": self.description,
            "default_enabled": self.default_enabled,
            "enabled_tenant_ids": list(self.enabled_tenant_ids),
            "disabled_tenant_ids": list(self.disabled_tenant_ids),
            "archived": self.archived,
            "version": self.version,
            "create_time": self.create_time.isoformat(),
            "update_time": self.update_time.isoformat(),
        }

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> FlagChanged:
        return cls(
            key=p["key"],
            description=p.get("description") or "",
            default_enabled=bool(p["default_enabled"]),
            enabled_tenant_ids=tuple(sorted(p["enabled_tenant_ids"])),
            disabled_tenant_ids=tuple(sorted(p["disabled_tenant_ids"])),
            archived=bool(p["archived"]),
            version=int(p["version"]),
            create_time=_time(p["create_time"]),
            update_time=_time(p["update_time"]),
        )


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """A config row's full state after a change (or as a snapshot row)."""

    subject: ClassVar[str] = CONFIG_CHANGED

    key: str
    scope: Scope
    tenant_id: str | None
    node_id: str | None
    value: ConfigValue
    description: str
    archived: bool
    version: int
    update_time: datetime

    @property
    def identity(self) -> tuple[str, Scope, str | None, str | None]:
        return (self.key, self.scope, self.tenant_id, self.node_id)

    def visible_to_tenant(self, tenant_id: str | None) -> bool:
        """Whether a tenant-scoped caller of ``tenant_id`` may see this row at all."""
        return visible_to_tenant(self.scope, self.tenant_id, tenant_id)

    def to_payload(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "scope": self.scope.value,
            "tenant_id": self.tenant_id,
            "node_id": self.node_id,
            "value": self.value,
            "description": self.description,
            "archived": self.archived,
            "version": self.version,
            "update_time": self.update_time.isoformat(),
        }

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ConfigChanged:
        return cls(
            key=p["key"],
            scope=_SCOPES[p["scope"]],
            tenant_id=p.get("tenant_id"),
            node_id=p.get("node_id"),
            value=p["value"],
            description=p.get("description") or "",
            archived=bool(p["archived"]),
            version=int(p["version"]),
            update_time=_time(p["update_time"]),
        )


def visible_to_tenant(scope: Scope, row_tenant: str | None, viewer_tenant: str | None) -> bool:
    """The tenant-row visibility rule: a tenant sees PLATFORM rows and its own TENANT rows.

    storage/stream.py applies the same rule in SQL for snapshots (``_CONFIG_SNAPSHOT``).
    """
    return scope is Scope.PLATFORM or (scope is Scope.TENANT and row_tenant == viewer_tenant)


class HealthChange(StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    STATUS_CHANGED = "STATUS_CHANGED"


@dataclass(frozen=True, slots=True)
class HealthSource:
    """A health source's registration and damped status, as carried by its events."""

    id: str  # prefixed (hsr_...)
    service_id: str
    health_url: str
    staleness_threshold_s: int
    check_interval_s: int
    failure_threshold: int
    success_threshold: int
    status: Status | None
    status_time: datetime
    version: int
    update_time: datetime

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service_id": self.service_id,
            "health_url": self.health_url,
            "staleness_threshold_s": self.staleness_threshold_s,
            "check_interval_s": self.check_interval_s,
            "failure_threshold": self.failure_threshold,
            "success_threshold": self.success_threshold,
            "status": self.status.value if self.status is not None else None,
            "status_time": self.status_time.isoformat(),
            "version": self.version,
            "update_time": self.update_time.isoformat(),
        }

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> HealthSource:
        return cls(
            id=p["id"],
            service_id=p["service_id"],
            health_url=p["health_url"],
            staleness_threshold_s=int(p["staleness_threshold_s"]),
            check_interval_s=int(p["check_interval_s"]),
            failure_threshold=int(p["failure_threshold"]),
            success_threshold=int(p["success_threshold"]),
            status=Status(p["status"]) if p.get("status") else None,
            status_time=_time(p["status_time"]),
            version=int(p["version"]),
            update_time=_time(p["update_time"]),
        )


@dataclass(frozen=True, slots=True)
class HealthSourceChanged:
    """A source was created, updated or deleted, or its damped status changed.

    ``previous_status`` and ``result_id`` (the result that changed it) are set, and
    written, only for STATUS_CHANGED.
    """

    subject: ClassVar[str] = HEALTH_CHANGED

    change: HealthChange
    source: HealthSource
    previous_status: Status | None = None
    result_id: str | None = None

    @property
    def identity(self) -> str:
        return self.source.id

    @property
    def tenant_id(self) -> str | None:
        return None

    @property
    def version(self) -> int:
        return self.source.version

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"change": self.change.value, "source": self.source.to_payload()}
        if self.change is HealthChange.STATUS_CHANGED:
            payload["previous_status"] = (
                self.previous_status.value if self.previous_status is not None else None
            )
            payload["result_id"] = self.result_id
        return payload

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> HealthSourceChanged:
        previous = p.get("previous_status")
        return cls(
            change=HealthChange(p["change"]),
            source=HealthSource.from_payload(p["source"]),
            previous_status=Status(previous) if previous else None,
            result_id=p.get("result_id"),
        )


Change = FlagChanged | ConfigChanged | HealthSourceChanged

_BY_SUBJECT: dict[str, type[FlagChanged] | type[ConfigChanged] | type[HealthSourceChanged]] = {
    FLAG_CHANGED: FlagChanged,
    CONFIG_CHANGED: ConfigChanged,
    HEALTH_CHANGED: HealthSourceChanged,
}


class UndecodableEvent(ValueError):
    """An outbox row whose subject or payload this version does not understand."""


def decode(subject: str, payload: Mapping[str, Any]) -> Change:
    """The event an outbox row carries (raises UndecodableEvent)."""
    kind = _BY_SUBJECT.get(subject)
    if kind is None:
        raise UndecodableEvent(f"unknown subject {subject!r}")
    try:
        return kind.from_payload(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableEvent(f"{subject} payload does not decode: {exc!r}") from None


def headers(changed_by: str | None) -> dict[str, Any]:
    """The outbox row's headers: who made the change ("" when unknown)."""
    return {"changed_by": changed_by or ""}


def changed_by(headers: Mapping[str, Any] | None) -> str:
    return str((headers or {}).get("changed_by") or "")


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One sequenced outbox row: the typed change plus the row's own fields.

    ``id`` is the outbox row id (a ULID, unique across databases: a relay can use it as
    a de-duplication key), ``seq`` its position in this database's stream.
    """

    seq: int
    id: str
    subject: str
    tenant_id: str | None
    changed_by: str
    created_at: datetime
    change: Change
