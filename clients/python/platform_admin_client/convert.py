"""Wire messages to the domain's states, and both to the JSON of a saved snapshot.

The local copy holds :mod:`domain.read_state` states (the same types the server's read
model holds), so evaluation and resolution run the server's own rules on them.
"""

from __future__ import annotations

import sys
from typing import Any

from platform_admin.v1 import config_pb2, flag_pb2

from domain.config_keys import ConfigKeySpec, ConfigValue, Scope, ValueType
from domain.read_state import ConfigState, FlagState, tenant_set

_SCOPES = {
    config_pb2.CONFIG_SCOPE_PLATFORM: Scope.PLATFORM,
    config_pb2.CONFIG_SCOPE_TENANT: Scope.TENANT,
    config_pb2.CONFIG_SCOPE_NODE: Scope.NODE,
}
_TYPES = {
    config_pb2.CONFIG_VALUE_TYPE_INTEGER: ValueType.INTEGER,
    config_pb2.CONFIG_VALUE_TYPE_BOOLEAN: ValueType.BOOLEAN,
    config_pb2.CONFIG_VALUE_TYPE_STRING: ValueType.STRING,
}


def version_of(etag: str) -> int:
    """The row version an etag names (the server's etags are the decimal version)."""
    return int(etag.strip('"') or 0)


def flag_state(flag: flag_pb2.Flag) -> FlagState:
    """The flag as the read model holds it; tenant ids interned, so 10,000 flags naming
    the same few hundred tenants hold one copy of each id."""
    return FlagState(
        key=flag.key,
        default_enabled=flag.default_enabled,
        enabled=tenant_set([sys.intern(t) for t in flag.enabled_tenant_ids]),
        disabled=tenant_set([sys.intern(t) for t in flag.disabled_tenant_ids]),
        archived=flag.archived,
        version=version_of(flag.etag),
    )


def value(message: config_pb2.ConfigValue) -> ConfigValue | None:
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    found: ConfigValue = getattr(message, kind)
    return found


def config_state(config: config_pb2.Config) -> ConfigState | None:
    """None for a row the client cannot place (unknown scope or no value)."""
    scope = _SCOPES.get(config.scope)
    found = value(config.value)
    if scope is None or found is None:
        return None
    return ConfigState(
        key=config.key,
        scope=scope,
        tenant_id=config.tenant_id or None,
        node_id=config.node_id or None,
        value=found,
        archived=config.archived,
        version=version_of(config.etag),
    )


def key_spec(key: config_pb2.ConfigKey) -> ConfigKeySpec | None:
    """The typing of one config key as ListConfigKeys describes it; None if unusable."""
    value_type = _TYPES.get(key.value_type)
    default = value(key.default_value)
    if value_type is None or default is None:
        return None
    return ConfigKeySpec(
        key=key.key,
        value_type=value_type,
        scopes=tuple(_SCOPES[s] for s in key.allowed_scopes if s in _SCOPES),
        default=default,
        description=key.description,
        min_value=key.min_value if key.HasField("min_value") else None,
        max_value=key.max_value if key.HasField("max_value") else None,
        max_length=key.max_length if key.HasField("max_length") else None,
        string_format=key.string_format,
    )


# --- the saved snapshot's JSON ------------------------------------------------------------


def flag_to_json(state: FlagState) -> dict[str, Any]:
    return {
        "key": state.key,
        "default_enabled": state.default_enabled,
        "enabled_tenant_ids": sorted(state.enabled),
        "disabled_tenant_ids": sorted(state.disabled),
        "archived": state.archived,
        "version": state.version,
    }


def flag_from_json(data: dict[str, Any]) -> FlagState:
    return FlagState(
        key=data["key"],
        default_enabled=bool(data["default_enabled"]),
        enabled=tenant_set([sys.intern(t) for t in data["enabled_tenant_ids"]]),
        disabled=tenant_set([sys.intern(t) for t in data["disabled_tenant_ids"]]),
        archived=bool(data["archived"]),
        version=int(data["version"]),
    )


def config_to_json(state: ConfigState) -> dict[str, Any]:
    return {
        "key": state.key,
        "scope": state.scope.value,
        "tenant_id": state.tenant_id,
        "node_id": state.node_id,
        "value": state.value,
        "archived": state.archived,
        "version": state.version,
    }


def config_from_json(data: dict[str, Any]) -> ConfigState:
    value = data["value"]
    if not isinstance(value, int | str):  # bool is an int
        raise ValueError(f"config value of {data['key']} is not int, bool or str")
    return ConfigState(
        key=data["key"],
        scope=Scope(data["scope"]),
        tenant_id=data.get("tenant_id") or None,
        node_id=data.get("node_id") or None,
        value=value,
        archived=bool(data["archived"]),
        version=int(data["version"]),
    )


def spec_to_json(spec: ConfigKeySpec) -> dict[str, Any]:
    return {
        "key": spec.key,
        "value_type": spec.value_type.value,
        "scopes": [s.value for s in spec.scopes],
        "default": spec.default,
        "description": spec.description,
        "min_value": spec.min_value,
        "max_value": spec.max_value,
        "max_length": spec.max_length,
        "string_format": spec.string_format,
    }


def spec_from_json(data: dict[str, Any]) -> ConfigKeySpec:
    return ConfigKeySpec(
        key=data["key"],
        value_type=ValueType(data["value_type"]),
        scopes=tuple(Scope(s) for s in data["scopes"]),
        default=data["default"],
        description=data.get("description", ""),
        min_value=data.get("min_value"),
        max_value=data.get("max_value"),
        max_length=data.get("max_length"),
        string_format=data.get("string_format", ""),
    )
