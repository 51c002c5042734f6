"""The configuration allow-list and the typing rules of its values.

Only keys listed here can be stored. Each declares its type, the scopes where it may
be set, its default (used when no row applies) and its bounds. Values travel typed
(int / bool / str) and are stored as JSON text, so the stored form is unambiguous.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

from domain.errors import Collector, InvalidArgument
from domain.text import has_control, has_prose_control

ConfigValue = int | bool | str


class Scope(StrEnum):
    PLATFORM = "PLATFORM"
    TENANT = "TENANT"
    NODE = "NODE"


class ValueType(StrEnum):
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRING = "string"


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$"
)
# Deliberately conservative: one @, a dotted domain, no spaces or quotes.
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_FORMATS = {"hostname": _HOSTNAME_RE, "email": _EMAIL_RE}


@dataclass(frozen=True)
class ConfigKeySpec:
    key: str
    value_type: ValueType
    scopes: tuple[Scope, ...]
    default: ConfigValue
    description: str
    min_value: int | None = None
    max_value: int | None = None
    max_length: int | None = None
    string_format: str = ""

    def check_value(self, field: str, value: ConfigValue | None) -> ConfigValue:
        """Returns the value if it has this key's type and bounds, else InvalidArgument."""
        if value is None:
            raise InvalidArgument.field(field, f"is required ({self.value_type} for {self.key})")
        actual = _type_of(value)
        if actual is not self.value_type:
            raise InvalidArgument.field(
                field, f"{self.key} takes values of type {self.value_type}, got {actual}"
            )
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if self.min_value is not None and value < self.min_value:
                raise InvalidArgument.field(field, f"{self.key} must be at least {self.min_value}")
            if self.max_value is not None and value > self.max_value:
                raise InvalidArgument.field(field, f"{self.key} must be at most {self.max_value}")
            return value
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidArgument.field(
                field, f"{self.key} must be at most {self.max_length} characters"
            )
        if has_control(value):
            raise InvalidArgument.field(field, f"{self.key} must not contain control characters")
        pattern = _FORMATS.get(self.string_format)
        if pattern is not None and not pattern.fullmatch(value):
            raise InvalidArgument.field(field, f"{self.key} must be a valid {self.string_format}")
        return value


def _type_of(value: ConfigValue) -> ValueType:
    if isinstance(value, bool):
        return ValueType.BOOLEAN
    if isinstance(value, int):
        return ValueType.INTEGER
    return ValueType.STRING


_SESSION_SCOPES = (Scope.PLATFORM, Scope.TENANT)
_EMAIL_SCOPES = (Scope.PLATFORM, Scope.NODE)

ALLOW_LIST: dict[str, ConfigKeySpec] = {
    spec.key: spec
    for spec in (
        ConfigKeySpec(
            "global.session_max_absolute_minutes",
            ValueType.INTEGER,
            _SESSION_SCOPES,
            720,
            "Longest a session may last, in minutes, however active it is.",
            min_value=5,
            max_value=43_200,
        ),
        ConfigKeySpec(
            "global.session_idle_minutes",
            ValueType.INTEGER,
            _SESSION_SCOPES,
            30,
            "Minutes of inactivity after which a session ends.",
            min_value=1,
            max_value=1_440,
        ),
        ConfigKeySpec(
            "global.mfa_required_default",
            ValueType.BOOLEAN,
            _SESSION_SCOPES,
            False,
            "Whether new users must enrol a second factor.",
        ),
        ConfigKeySpec(
            "global.password_min_length",
            ValueType.INTEGER,
            _SESSION_SCOPES,
            12,
            "Minimum password length in characters.",
            min_value=8,
            max_value=128,
        ),
        ConfigKeySpec(
            "global.password_require_symbols",
            ValueType.BOOLEAN,
            _SESSION_SCOPES,
            True,
            "Whether passwords must contain a non-alphanumeric character.",
        ),
        ConfigKeySpec(
            "global.max_failed_login_attempts",
            ValueType.INTEGER,
            _SESSION_SCOPES,
            5,
            "Failed logins before an account is locked.",
            min_value=1,
            max_value=100,
        ),
        ConfigKeySpec(
            "email.smtp_host",
            ValueType.STRING,
            _EMAIL_SCOPES,
            "localhost",
            "SMTP relay host name; a node may use a local relay.",
            max_length=253,
            string_format="hostname",
        ),
        ConfigKeySpec(
            "email.smtp_port",
            ValueType.INTEGER,
            _EMAIL_SCOPES,
            587,
            "SMTP relay port.",
            min_value=1,
            max_value=65_535,
        ),
        ConfigKeySpec(
            "email.from_address",
            ValueType.STRING,
            (Scope.PLATFORM,),
            "no-reply@example.com",
            "Sender address of platform e-mail.",
            max_length=254,
            string_format="email",
        ),
    )
}

MAX_DESCRIPTION = 2_000
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


def spec_for(field: str, key: str) -> ConfigKeySpec:
    spec = ALLOW_LIST.get(key)
    if spec is None:
        shown = key if len(key) <= 100 else key[:100] + "…"
        raise InvalidArgument.field(field, f"'{shown}' is not an allow-listed config key")
    return spec


def serialize(value: ConfigValue) -> str:
    return json.dumps(value, ensure_ascii=False)


def deserialize(text: str) -> ConfigValue:
    value = json.loads(text)
    if not isinstance(value, int | str):  # bool is an int
        raise ValueError(f"stored config value is not int, bool or str: {text[:40]!r}")
    return value


def check_node_id(field: str, node_id: str) -> str:
    if not _NODE_ID_RE.fullmatch(node_id):
        raise InvalidArgument.field(field, "must be 1-100 characters of A-Z a-z 0-9 . _ : -")
    return node_id


@dataclass(frozen=True)
class ConfigTarget:
    """Which row a request addresses: key plus the scope's identity columns."""

    key: str
    scope: Scope
    tenant_id: str | None
    node_id: str | None


def check_target(
    key: str, scope: Scope | None, tenant_id: str, node_id: str, *, for_write: bool
) -> tuple[ConfigKeySpec, ConfigTarget]:
    """Validates key and scope identity together; every violation is reported at once.

    For writes the scope must also be one the key allows.
    """
    from domain.ids import check_ulid

    errors = Collector()
    spec = None
    try:
        spec = spec_for("key", key)
    except InvalidArgument as exc:
        errors.violations.extend(exc.violations)
    tenant: str | None = None
    node: str | None = None
    if scope is None:
        errors.add("scope", "is required (PLATFORM, TENANT or NODE)")
    else:
        if scope is Scope.TENANT:
            if not tenant_id:
                errors.add("tenant_id", "is required for TENANT scope")
        elif tenant_id:
            errors.add("tenant_id", f"must be empty for {scope} scope")
        if scope is Scope.NODE:
            if not node_id:
                errors.add("node_id", "is required for NODE scope")
        elif node_id:
            errors.add("node_id", f"must be empty for {scope} scope")
        if for_write and spec is not None and scope not in spec.scopes:
            allowed = ", ".join(s.value for s in spec.scopes)
            errors.add("scope", f"{key} may be set only at {allowed} scope")
    if tenant_id:
        try:
            tenant = check_ulid("tenant_id", tenant_id)
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
    if node_id:
        try:
            node = check_node_id("node_id", node_id)
        except InvalidArgument as exc:
            errors.violations.extend(exc.violations)
    errors.raise_if_any()
    assert spec is not None and scope is not None
    return spec, ConfigTarget(key, scope, tenant, node)


def check_description(field: str, description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument.field(field, f"must be at most {MAX_DESCRIPTION} characters")
    if has_prose_control(description):
        raise InvalidArgument.field(
            field, "must not contain control characters (newline and tab are allowed)"
        )
    return description
