"""OpenFeature answers: one flag or `config:` key evaluated for a target, from the read model.

flagd RPC mode (evaluation.py) and OFREP (ofrep.py) both answer through :class:`Answers`,
which asks the read model (server/changes/read_model.py) and so the one evaluation rule
of domain/flags.py and the one resolution rule of domain/read_model.py. Only the
vocabulary is translated here:

* a flag is a boolean with variants ``on`` / ``off``; a tenant-list decision is reason
  ``TARGETING_MATCH``, the flag default ``DEFAULT``; an archived flag is ``DISABLED``
  with no value, so providers return the caller's code default;
* ``config:<key>`` is typed like the key (integer keys may also be read as floats); a
  TENANT or NODE row is ``TARGETING_MATCH``, a PLATFORM row or the key's default is
  ``DEFAULT``; the variant is the value's text and the source scope is in metadata.

Never ``STATIC``: every answer may depend on the tenant, and providers cache STATIC
answers by flag key alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from domain.config_keys import ALLOW_LIST, ConfigKeySpec, ConfigValue, Scope, ValueType
from domain.errors import InvalidArgument, NotFound
from domain.flags import Reason
from domain.text import has_control
from server.changes.read_model import ReadModel
from server.openfeature.codes import ErrorCode
from server.openfeature.context import Target, missing_tenant

CONFIG_PREFIX = "config:"
TARGETING_MATCH = "TARGETING_MATCH"
DEFAULT = "DEFAULT"
DISABLED = "DISABLED"
ON, OFF = "on", "off"
_SHOWN_KEY = 100

Metadata = dict[str, str | int | float | bool]


class Kind(StrEnum):
    """The type a caller asked for (flagd has one RPC per type; OFREP asks for any)."""

    BOOLEAN = "boolean"
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    OBJECT = "object"


_KINDS_OF = {
    ValueType.BOOLEAN: (Kind.BOOLEAN,),
    ValueType.INTEGER: (Kind.INTEGER, Kind.FLOAT),
    ValueType.STRING: (Kind.STRING,),
}


@dataclass(frozen=True, slots=True)
class Answer:
    key: str
    kind: Kind
    reason: str
    value: ConfigValue | float | None  # None: DISABLED, the caller's default applies
    variant: str | None
    metadata: Metadata = field(default_factory=dict)


def shown(key: str) -> str:
    return key if len(key) <= _SHOWN_KEY else key[:_SHOWN_KEY] + "…"


def flag_not_found(key: str) -> NotFound:
    return NotFound(f"flag {shown(key)} does not exist", reason=ErrorCode.FLAG_NOT_FOUND)


def type_mismatch(key: str, actual: Kind, wanted: Kind) -> InvalidArgument:
    error = InvalidArgument.field(
        "flag_key", f"{shown(key)} is a {actual} flag; it cannot be resolved as {wanted}"
    )
    error.reason = ErrorCode.TYPE_MISMATCH
    return error


def variant_of(value: ConfigValue) -> str:
    """A config answer's variant: the value as text (true/false for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_kind(spec: ConfigKeySpec) -> Kind:
    return _KINDS_OF[spec.value_type][0]


def config_answer(
    key: str, spec: ConfigKeySpec, value: ConfigValue, scope: Scope | None, kind: Kind
) -> Answer:
    decided = scope in (Scope.TENANT, Scope.NODE)
    return Answer(
        key=key,
        kind=kind,
        reason=TARGETING_MATCH if decided else DEFAULT,
        value=float(value) if kind is Kind.FLOAT else value,
        variant=variant_of(value),
        metadata={"sourceScope": scope.value if scope else "DEFAULT"},
    )


class Answers:
    def __init__(self, read_model: ReadModel) -> None:
        self.read_model = read_model

    def evaluate(self, key: str, target: Target, wanted: Kind | None = None) -> Answer:
        """One key for ``target``; FLAG_NOT_FOUND / TYPE_MISMATCH / context errors raise."""
        if has_control(key):
            # No flag or config key holds one: say so rather than "not found" for "key\n".
            raise InvalidArgument.field("flag_key", "must not contain control characters")
        if key.startswith(CONFIG_PREFIX):
            spec = ALLOW_LIST.get(key[len(CONFIG_PREFIX) :])
            if spec is None:
                raise flag_not_found(key)
            kinds = _KINDS_OF[spec.value_type]
            if wanted is not None and wanted not in kinds:
                raise type_mismatch(key, kinds[0], wanted)
            value, scope = self.read_model.resolve_value(spec, target.tenant_id, target.node_id)
            return config_answer(key, spec, value, scope, wanted or kinds[0])
        flag = self.read_model.flag(key)
        if flag is None:
            raise flag_not_found(key)
        if wanted is not None and wanted is not Kind.BOOLEAN:
            raise type_mismatch(key, Kind.BOOLEAN, wanted)
        metadata: Metadata = {"etag": str(flag.version)}
        if flag.archived:
            return Answer(key, Kind.BOOLEAN, DISABLED, None, None, metadata)
        if target.tenant_id is None:
            raise missing_tenant()
        evaluation = flag.evaluate(target.tenant_id)
        return Answer(
            key=key,
            kind=Kind.BOOLEAN,
            reason=DEFAULT if evaluation.reason is Reason.DEFAULT else TARGETING_MATCH,
            value=evaluation.enabled,
            variant=ON if evaluation.enabled else OFF,
            metadata=metadata,
        )

    def evaluate_all(self, target: Target) -> Iterator[Answer]:
        """Every live flag (by key), then every config key, for ``target``."""
        if target.tenant_id is None:
            raise missing_tenant()
        tenant = target.tenant_id
        for flag in self.read_model.live_flags():
            evaluation = flag.evaluate(tenant)
            yield Answer(
                key=flag.key,
                kind=Kind.BOOLEAN,
                reason=DEFAULT if evaluation.reason is Reason.DEFAULT else TARGETING_MATCH,
                value=evaluation.enabled,
                variant=ON if evaluation.enabled else OFF,
                metadata={"etag": str(flag.version)},
            )
        for name, spec in sorted(ALLOW_LIST.items()):
            value, scope = self.read_model.resolve_value(spec, tenant, target.node_id)
            yield config_answer(CONFIG_PREFIX + name, spec, value, scope, config_kind(spec))
