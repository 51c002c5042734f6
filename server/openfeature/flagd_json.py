"""The flag set as flagd flag-definition JSON (https://flagd.dev/schema/v0/flags.json).

What SyncFlags / FetchAllFlags send to in-process providers, which evaluate it locally
with JsonLogic. The targeting written here gives exactly platform-admin's answers (a
property test checks it against EvaluateFlag / ResolveConfig with flagd-core):

* a flag: ``state`` ENABLED (DISABLED when archived), variants ``on``/``off``,
  ``defaultVariant`` from ``default_enabled``; targeting returns ``off`` for a tenant in
  the disabled list, then ``on`` for one in the enabled list, else null (the default,
  reason DEFAULT). Disabled wins over enabled, as in domain/flags.py.
* ``config:<key>``: variants are the values' texts; targeting tries the NODE rows (on the
  ``nodeId`` attribute), then the TENANT rows, else null, and ``defaultVariant`` is the
  PLATFORM row's value if one is live, else the key's default. That is NODE > TENANT >
  PLATFORM > default (domain/resolution.py), with reason TARGETING_MATCH exactly when a
  TENANT or NODE row decided.

The tenant is the ``tenantId`` attribute, falling back to ``targetingKey``. Every flag
carries targeting, so no answer is ever STATIC. Lists are sorted, so the same state
always renders the same text.
"""

from __future__ import annotations

import json
from collections import defaultdict
from enum import StrEnum
from typing import Any

from domain import read_state as rm
from domain.config_keys import ALLOW_LIST, ConfigValue
from domain.errors import InvalidArgument
from domain.text import has_control
from server.openfeature.answers import CONFIG_PREFIX, OFF, ON, shown, variant_of
from server.openfeature.context import NODE_ATTRIBUTE, TARGETING_KEY, TENANT_ATTRIBUTE

SCHEMA = "https://flagd.dev/schema/v0/flags.json"
_TENANT = {"or": [{"var": TENANT_ATTRIBUTE}, {"var": TARGETING_KEY}]}
_NODE = {"var": NODE_ATTRIBUTE}


class Selector(StrEnum):
    ALL = ""
    FLAGS = "flags"
    CONFIGS = "configs"


def parse_selector(field: str, raw: str) -> Selector:
    try:
        if has_control(raw):
            raise ValueError(raw)
        return Selector(raw.strip(" ").lower())
    except ValueError:
        raise InvalidArgument.field(
            field, f"'{shown(raw)}' is not a selector: use 'flags', 'configs' or nothing"
        ) from None


def no_rule(variant: str) -> dict[str, Any]:
    """Targeting that always answers "no rule matched" (reason DEFAULT), never STATIC."""
    return {"if": [False, variant, None]}


def _in(attribute: Any, members: list[str]) -> dict[str, Any]:
    return {"in": [attribute, members]}


def flag_definition(flag: rm.FlagState) -> dict[str, Any]:
    rules: list[Any] = []
    if flag.disabled:
        rules += [_in(_TENANT, sorted(flag.disabled)), OFF]
    if flag.enabled:
        rules += [_in(_TENANT, sorted(flag.enabled)), ON]
    return {
        "state": "DISABLED" if flag.archived else "ENABLED",
        "variants": {ON: True, OFF: False},
        "defaultVariant": ON if flag.default_enabled else OFF,
        "targeting": {"if": [*rules, None]} if rules else no_rule(OFF),
        "metadata": {"etag": str(flag.version)},
    }


def _groups(rows: dict[str, ConfigValue]) -> list[tuple[str, list[str]]]:
    """Members (tenants or nodes) grouped by the variant of their value, sorted."""
    by_variant: dict[str, list[str]] = defaultdict(list)
    for member, value in rows.items():
        by_variant[variant_of(value)].append(member)
    return [(variant, sorted(members)) for variant, members in sorted(by_variant.items())]


def config_definitions(state: rm.ReadState) -> dict[str, dict[str, Any]]:
    tenants: dict[str, dict[str, ConfigValue]] = defaultdict(dict)
    nodes: dict[str, dict[str, ConfigValue]] = defaultdict(dict)
    for tenant, values in state.tenant_values.items():
        for key, value in values.items():
            tenants[key][tenant] = value
    for node, values in state.node_values.items():
        for key, value in values.items():
            nodes[key][node] = value
    definitions: dict[str, dict[str, Any]] = {}
    for key, spec in sorted(ALLOW_LIST.items()):
        fallback = state.platform_values.get(key, spec.default)
        variants = {variant_of(fallback): fallback}
        rules: list[Any] = []
        for attribute, rows in ((_NODE, nodes.get(key, {})), (_TENANT, tenants.get(key, {}))):
            for variant, members in _groups(rows):
                rules += [_in(attribute, members), variant]
            variants.update({variant_of(v): v for v in rows.values()})
        definitions[CONFIG_PREFIX + key] = {
            "state": "ENABLED",
            "variants": dict(sorted(variants.items())),
            "defaultVariant": variant_of(fallback),
            "targeting": {"if": [*rules, None]} if rules else no_rule(variant_of(fallback)),
            "metadata": {"valueType": spec.value_type.value},
        }
    return definitions


def flag_set(state: rm.ReadState, selector: Selector = Selector.ALL) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if selector is not Selector.CONFIGS:
        for key in sorted(state.flags):
            flags[key] = flag_definition(state.flags[key])
    if selector is not Selector.FLAGS:
        flags.update(config_definitions(state))
    return {"$schema": SCHEMA, "flags": flags}


def render(state: rm.ReadState, selector: Selector = Selector.ALL) -> str:
    return json.dumps(flag_set(state, selector), separators=(",", ":"), ensure_ascii=False)
