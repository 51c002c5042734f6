"""The pure flag rules: key and mask checks, override application, evaluation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidArgument
from domain.flags import (
    MUTABLE_FIELDS,
    Evaluation,
    Override,
    Reason,
    apply_override,
    check_description,
    check_key,
    check_update_mask,
    evaluate,
)

A, B, C = "01JA0000000000000000000AAA", "01JB0000000000000000000BBB", "01JC0000000000000000000CCC"


def ev(default=False, enabled=(), disabled=(), archived=False, tenant=A) -> Evaluation:
    return evaluate(
        default_enabled=default,
        enabled_tenant_ids=enabled,
        disabled_tenant_ids=disabled,
        archived=archived,
        tenant_id=tenant,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(default=False), Evaluation(False, Reason.DEFAULT)),
        (dict(default=True), Evaluation(True, Reason.DEFAULT)),
        (dict(default=False, enabled=[A]), Evaluation(True, Reason.TENANT_ENABLED)),
        (dict(default=True, disabled=[A]), Evaluation(False, Reason.TENANT_DISABLED)),
        (dict(default=True, enabled=[B], disabled=[C]), Evaluation(True, Reason.DEFAULT)),
        (dict(default=True, archived=True), Evaluation(False, Reason.ARCHIVED)),
        (dict(enabled=[A], archived=True), Evaluation(False, Reason.ARCHIVED)),
        # Lists that broke the "never both" rule fail safe: disabled wins.
        (dict(default=True, enabled=[A], disabled=[A]), Evaluation(False, Reason.TENANT_DISABLED)),
    ],
)
def test_evaluation_table(kwargs, expected):
    assert ev(**kwargs) == expected


@pytest.mark.parametrize(
    "key", ["a", "checkout.new-flow", "a_b.c-d9", "z" * 100, "a-", "a..b", "x0"]
)
def test_valid_keys(key):
    assert check_key("key", key) == key


@pytest.mark.parametrize(
    "key",
    ["", "A", "Ab", "1a", "-a", ".a", "_a", "a b", "a/b", "a\n", "\na", "é", "a" * 101, "a:b"],
)
def test_invalid_keys_name_the_field_and_the_pattern(key):
    with pytest.raises(InvalidArgument) as caught:
        check_key("keys[3]", key)
    (violation,) = caught.value.violations
    assert violation.field == "keys[3]"
    assert (
        "required" in violation.description or "^[a-z][a-z0-9_.-]{0,99}$" in violation.description
    )


def test_description_limit():
    assert check_description("description", "d" * 2000) == "d" * 2000
    with pytest.raises(InvalidArgument, match="at most 2000 characters"):
        check_description("description", "d" * 2001)


def test_update_mask_rules():
    assert check_update_mask("update_mask", []) == MUTABLE_FIELDS
    assert check_update_mask("update_mask", ["description"]) == {"description"}
    assert check_update_mask("update_mask", ["default_enabled", "description"]) == MUTABLE_FIELDS
    for path, why in [
        ("key", "immutable"),
        ("enabled_tenant_ids", "SetTenantOverride"),
        ("archived", "ArchiveFlag"),
        ("create_time", "set by the server"),
        ("colour", "not a field of Flag"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            check_update_mask("update_mask", ["description", path])
        (violation,) = caught.value.violations
        assert violation.field == "update_mask"
        assert path in violation.description and why in violation.description


def test_apply_override_moves_the_tenant_and_keeps_lists_sorted():
    assert apply_override([], [], B, Override.ENABLED) == ((B,), ())
    assert apply_override([C], [], A, Override.ENABLED) == ((A, C), ())
    assert apply_override([A, C], [], A, Override.DISABLED) == ((C,), (A,))
    assert apply_override([C], [A], A, Override.INHERIT) == ((C,), ())
    assert apply_override([A], [], B, Override.INHERIT) == ((A,), ())
    # Repairs lists that held the tenant twice or in both.
    assert apply_override([A, A], [A], A, Override.ENABLED) == ((A,), ())


# --- Properties ------------------------------------------------------------------------------

TENANTS = st.sampled_from([A, B, C, "01JD0000000000000000000DDD", "01JE0000000000000000000EEE"])
OPS = st.lists(st.tuples(TENANTS, st.sampled_from(list(Override))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, default=st.booleans(), asked=TENANTS)
def test_evaluation_agrees_with_the_last_override_of_each_tenant(ops, default, asked):
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    last: dict[str, Override] = {}
    for tenant, override in ops:
        enabled, disabled = apply_override(enabled, disabled, tenant, override)
        last[tenant] = override
        # Invariants after every step: sorted, unique, never in both lists.
        assert list(enabled) == sorted(set(enabled))
        assert list(disabled) == sorted(set(disabled))
        assert not set(enabled) & set(disabled)

    assert set(enabled) == {t for t, o in last.items() if o is Override.ENABLED}
    assert set(disabled) == {t for t, o in last.items() if o is Override.DISABLED}
    got = ev(default=default, enabled=enabled, disabled=disabled, tenant=asked)
    expected = {
        Override.ENABLED: Evaluation(True, Reason.TENANT_ENABLED),
        Override.DISABLED: Evaluation(False, Reason.TENANT_DISABLED),
    }.get(last.get(asked, Override.INHERIT), Evaluation(default, Reason.DEFAULT))
    assert got == expected
    archived = ev(default=default, enabled=enabled, disabled=disabled, archived=True, tenant=asked)
    assert archived == Evaluation(False, Reason.ARCHIVED)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, tenant=TENANTS, override=st.sampled_from(list(Override)))
def test_an_override_is_idempotent_and_touches_only_its_tenant(ops, tenant, override):
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    for t, o in ops:
        enabled, disabled = apply_override(enabled, disabled, t, o)
    once = apply_override(enabled, disabled, tenant, override)
    assert apply_override(*once, tenant, override) == once
    others_before = (set(enabled) - {tenant}, set(disabled) - {tenant})
    assert (set(once[0]) - {tenant}, set(once[1]) - {tenant}) == others_before
