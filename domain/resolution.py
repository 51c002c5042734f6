"""Effective-value resolution: NODE > TENANT > PLATFORM > the key's default."""

from __future__ import annotations

from collections.abc import Mapping

from domain.config_keys import ConfigKeySpec, ConfigValue, Scope

# Most specific first.
PRECEDENCE = (Scope.NODE, Scope.TENANT, Scope.PLATFORM)


def resolve(
    spec: ConfigKeySpec, live_values: Mapping[Scope, ConfigValue]
) -> tuple[ConfigValue, Scope | None]:
    """Picks the most specific live (unarchived) value; ``None`` scope means the default.

    ``live_values`` holds, per scope, the value of the row that matches the caller's
    tenant/node, if such a row exists and is not archived.
    """
    for scope in PRECEDENCE:
        if scope in live_values:
            return live_values[scope], scope
    return spec.default, None
