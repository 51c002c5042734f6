"""Property: the flagd JSON that SyncFlags sends, evaluated in-process by flagd-core (the
engine the flagd providers use), gives exactly the answers of EvaluateFlag / ResolveConfig.

Random flags (defaults, override sequences, archiving), random config rows at every scope
(some archived) and every tenant x node are compared. The expected side is the read
model's state, which is what EvaluateFlag and ResolveConfig answer from.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from domain import read_state as rm
from domain.config_keys import ALLOW_LIST, Scope, ValueType
from domain.flags import Override, Reason, apply_override
from server.openfeature import flagd_json

TENANTS = [f"01JP{i:022d}" for i in range(5)]
OUTSIDER = "01JQ0000000000000000000000"  # in no list and no row
NODES = ["node-a", "node-b"]
CODE_DEFAULT = object()

flag_keys = st.sampled_from(["f.one", "f.two", "f.three", "f.four"])
overrides = st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(list(Override))))


@st.composite
def flag_states(draw: Any) -> list[rm.FlagState]:
    flags = []
    for version, key in enumerate(draw(st.sets(flag_keys)), start=1):
        enabled: tuple[str, ...] = ()
        disabled: tuple[str, ...] = ()
        for tenant, override in draw(overrides):
            enabled, disabled = apply_override(enabled, disabled, tenant, override)
        flags.append(
            rm.FlagState(
                key=key,
                default_enabled=draw(st.booleans()),
                enabled=enabled,
                disabled=disabled,
                archived=draw(st.booleans()),
                version=version,
            )
        )
    return flags


def values_for(value_type: ValueType) -> st.SearchStrategy[Any]:
    if value_type is ValueType.BOOLEAN:
        return st.booleans()
    if value_type is ValueType.INTEGER:
        return st.integers(1, 50)
    return st.sampled_from(["a.example", "b.example", "c.example"])


@st.composite
def config_states(draw: Any) -> list[rm.ConfigState]:
    rows = []
    for key in draw(st.sets(st.sampled_from(sorted(ALLOW_LIST)))):
        spec = ALLOW_LIST[key]
        targets = [(Scope.PLATFORM, None, None)]
        targets += [(Scope.TENANT, t, None) for t in TENANTS]
        targets += [(Scope.NODE, None, n) for n in NODES]
        for scope, tenant, node in draw(st.lists(st.sampled_from(targets), unique=True)):
            rows.append(
                rm.ConfigState(
                    key=key,
                    scope=scope,
                    tenant_id=tenant,
                    node_id=node,
                    value=draw(values_for(spec.value_type)),
                    archived=draw(st.booleans()),
                    version=1,
                )
            )
    return rows


def context(tenant: str, node: str | None, by_attribute: bool) -> EvaluationContext:
    attributes: dict[str, Any] = {"nodeId": node} if node else {}
    if by_attribute:
        return EvaluationContext("someone-else", {**attributes, "tenantId": tenant})
    return EvaluationContext(tenant, attributes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flags=flag_states(), configs=config_states(), by_attribute=st.booleans())
def test_in_process_evaluation_agrees_with_evaluate_flag_and_resolve_config(
    flags, configs, by_attribute
):
    state = rm.ReadState()
    for flag in flags:
        state.apply_flag(flag)
    for config in configs:
        state.apply_config(config)
    engine = FlagdCore()
    engine.set_flags(json.loads(flagd_json.render(state)))

    for tenant in [*TENANTS, OUTSIDER]:
        for node in [None, *NODES]:
            ctx = context(tenant, node, by_attribute)
            for flag in flags:
                got = engine.resolve_boolean_value(flag.key, CODE_DEFAULT, ctx)  # type: ignore[arg-type]
                if flag.archived:
                    assert (got.value, got.reason) == (CODE_DEFAULT, "DISABLED")
                    continue
                expected = flag.evaluate(tenant)
                reason = "DEFAULT" if expected.reason is Reason.DEFAULT else "TARGETING_MATCH"
                assert (got.value, got.reason) == (expected.enabled, reason), (flag, tenant)
            for key, spec in ALLOW_LIST.items():
                resolve = {
                    ValueType.BOOLEAN: engine.resolve_boolean_value,
                    ValueType.INTEGER: engine.resolve_integer_value,
                    ValueType.STRING: engine.resolve_string_value,
                }[spec.value_type]
                got = resolve(f"config:{key}", CODE_DEFAULT, ctx)  # type: ignore[operator]
                value, scope = state.resolve(spec, tenant, node)
                reason = "TARGETING_MATCH" if scope in (Scope.TENANT, Scope.NODE) else "DEFAULT"
                assert (got.value, got.reason) == (value, reason), (key, tenant, node, configs)
                assert type(got.value) is type(value)


def test_the_same_state_renders_the_same_text():
    state = rm.ReadState()
    state.apply_flag(rm.FlagState("f", True, (TENANTS[1], TENANTS[0]), (), False, 1))
    first = flagd_json.render(state)
    assert first == flagd_json.render(state)
    parsed = json.loads(first)
    assert parsed["$schema"] == flagd_json.SCHEMA
    assert parsed["flags"]["f"]["targeting"]["if"][0]["in"][1] == sorted(TENANTS[:2])
    # Every entry carries targeting: nothing is ever STATIC (cached by key alone).
    assert all(entry["targeting"] for entry in parsed["flags"].values())
