"""FlagService through a real server and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from platform_admin.v1 import flag_pb2 as pb
from platform_admin.v1 import flag_pb2_grpc

from domain.flags import Override, apply_override
from server.app import App
from server.rpc.flag_service import FlagServicer
from server.rpc.pipeline import AllowAll, Pipeline
from server.security import principal
from server.security.principal import PLATFORM_ADMIN, SERVICE, TENANT_ADMIN, Principal
from server.settings import Settings
from tests.helpers import TENANT_A, TENANT_B, expect_error

SUBJECT = "platform_admin.flag.changed"
ADMIN_SUB = "01JAD000000000000000000ADM"
ENABLED = pb.TENANT_OVERRIDE_ENABLED
DISABLED = pb.TENANT_OVERRIDE_DISABLED
INHERIT = pb.TENANT_OVERRIDE_INHERIT


class HeaderAuthorizer:
    """The principal comes from plain headers, so tests can act as any role."""

    def authorize(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
        md = {k: str(v) for k, v in metadata}
        return Principal(
            subject=md.get("x-sub"),
            roles=frozenset(md.get("x-roles", PLATFORM_ADMIN).split(",")),
            tenant_id=md.get("x-tenant"),
        )


def as_tenant_admin(tenant: str) -> tuple[tuple[str, str], ...]:
    return (
        ("x-roles", TENANT_ADMIN),
        ("x-tenant", tenant),
        ("x-sub", "01JAD000000000000000000TNA"),
    )


@pytest.fixture
async def app(db_url: str, settings: Settings) -> AsyncIterator[App]:
    application = App(replace(settings), db_url, authorizer=HeaderAuthorizer())
    await application.start()
    yield application
    await application.stop(grace=0)


@pytest.fixture
def flags(channel: grpc.aio.Channel) -> flag_pb2_grpc.FlagServiceStub:
    return flag_pb2_grpc.FlagServiceStub(channel)


def state(sql: psycopg.Connection) -> tuple[int, list[tuple[Any, ...]]]:
    """Outbox row count and every flag row: what 'nothing written' compares."""
    (outbox,) = sql.execute("SELECT count(*) FROM outbox").fetchone() or (0,)
    rows = sql.execute(
        "SELECT key, description, default_enabled, enabled_tenant_ids, disabled_tenant_ids,"
        " is_archived, version, updated_at FROM feature_flags ORDER BY key"
    ).fetchall()
    return outbox, rows


def events(sql: psycopg.Connection) -> list[dict[str, Any]]:
    rows = sql.execute(
        "SELECT payload FROM outbox WHERE subject = %s ORDER BY created_at, id", (SUBJECT,)
    ).fetchall()
    return [r[0] for r in rows]


async def create(flags: Any, key: str = "checkout.new-flow", **kw: Any) -> pb.Flag:
    response = await flags.CreateFlag(pb.CreateFlagRequest(key=key, **kw))
    return response.flag


async def override(
    flags: Any, tenant: str, how: int, key: str = "checkout.new-flow", etag: str = ""
) -> pb.Flag:
    response = await flags.SetTenantOverride(
        pb.SetTenantOverrideRequest(key=key, tenant_id=tenant, override=how, etag=etag)
    )
    return response.flag


# --- Create / Get / List -------------------------------------------------------------------


async def test_create_then_get_returns_the_flag_and_writes_one_event(flags, sql):
    created = await create(flags, description="New checkout", default_enabled=True)
    assert (created.key, created.description, created.default_enabled) == (
        "checkout.new-flow",
        "New checkout",
        True,
    )
    assert list(created.enabled_tenant_ids) == [] and list(created.disabled_tenant_ids) == []
    assert created.etag == "1" and not created.archived
    assert created.create_time == created.update_time
    got = await flags.GetFlag(pb.GetFlagRequest(key="checkout.new-flow"))
    assert got.flag == created

    (row,) = sql.execute("SELECT payload, tenant_id, headers FROM outbox").fetchall()
    payload, tenant_id, headers = row
    assert tenant_id is None
    assert payload == {
        "key": "checkout.new-flow",
        "description": "New checkout",
        "default_enabled": True,
        "enabled_tenant_ids": [],
        "disabled_tenant_ids": [],
        "archived": False,
        "version": 1,
        "create_time": payload["create_time"],
        "update_time": payload["update_time"],
    }
    # ISO-8601 with an offset, the same instants the API shows.
    for field, shown in (
        ("create_time", created.create_time),
        ("update_time", created.update_time),
    ):
        assert datetime.fromisoformat(payload[field]) == shown.ToDatetime(tzinfo=UTC)
    assert headers == {"changed_by": ""}  # auth off: anonymous


async def test_create_records_the_caller_as_actor(flags, sql):
    await flags.CreateFlag(pb.CreateFlagRequest(key="a"), metadata=(("x-sub", ADMIN_SUB),))
    (headers,) = sql.execute("SELECT headers FROM outbox").fetchone()
    assert headers == {"changed_by": ADMIN_SUB}


async def test_create_existing_key_is_already_exists_even_when_archived(flags, sql):
    await create(flags)
    before = state(sql)
    failure = await expect_error(
        flags.CreateFlag(pb.CreateFlagRequest(key="checkout.new-flow")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "checkout.new-flow" in failure.message
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow"))
    before = state(sql)
    await expect_error(
        flags.CreateFlag(pb.CreateFlagRequest(key="checkout.new-flow", default_enabled=True)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert state(sql) == before


BAD_CREATES = [
    pytest.param(dict(key=""), "key", id="empty-key"),
    pytest.param(dict(key="Checkout"), "key", id="upper-case"),
    pytest.param(dict(key="1flag"), "key", id="leading-digit"),
    pytest.param(dict(key="_flag"), "key", id="leading-underscore"),
    pytest.param(dict(key="has space"), "key", id="space"),
    pytest.param(dict(key="flag\n"), "key", id="trailing-newline"),
    pytest.param(dict(key="a" * 101), "key", id="101-chars"),
    pytest.param(dict(key="flag/x"), "key", id="slash"),
    pytest.param(dict(key="ok", description="d" * 2001), "description", id="long-description"),
    pytest.param(dict(key="ok", description="nul\x00"), "description", id="nul-description"),
]


@pytest.mark.parametrize(("fields", "bad_field"), BAD_CREATES)
async def test_bad_create_is_rejected_and_writes_nothing(flags, sql, fields, bad_field):
    before = state(sql)
    await expect_error(
        flags.CreateFlag(pb.CreateFlagRequest(**fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
        bad_field,
    )
    assert state(sql) == before


async def test_create_accepts_the_limits(flags):
    longest = "a" + "z0_.-" * 19 + "abcd"
    assert len(longest) == 100
    flag = await create(flags, longest, description="d" * 2000)
    assert flag.key == longest and len(flag.description) == 2000


async def test_create_reports_every_bad_field_at_once(flags):
    failure = await expect_error(
        flags.CreateFlag(pb.CreateFlagRequest(key="BAD", description="x" * 2001)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"key", "description"}


async def test_get_unknown_or_malformed_key(flags):
    failure = await expect_error(
        flags.GetFlag(pb.GetFlagRequest(key="nope")), grpc.StatusCode.NOT_FOUND
    )
    assert "flag nope does not exist" in failure.message
    await expect_error(
        flags.GetFlag(pb.GetFlagRequest(key="NOPE")), grpc.StatusCode.INVALID_ARGUMENT, "key"
    )


async def test_list_paginates_by_key_and_hides_archived(flags):
    keys = [f"flag.{i:02d}" for i in range(7)]
    for key in reversed(keys):
        await create(flags, key)
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="flag.03"))
    seen, token, pages = [], "", 0
    while True:
        page = await flags.ListFlags(pb.ListFlagsRequest(page_size=2, page_token=token))
        assert len(page.flags) <= 2
        seen.extend(f.key for f in page.flags)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [k for k in keys if k != "flag.03"] and pages == 3
    everything = await flags.ListFlags(pb.ListFlagsRequest(show_archived=True))
    assert [f.key for f in everything.flags] == keys
    assert [f.archived for f in everything.flags] == [k == "flag.03" for k in keys]
    assert not everything.next_page_token


async def test_list_rejects_bad_paging(flags):
    await create(flags, "a")
    await create(flags, "b")
    await expect_error(
        flags.ListFlags(pb.ListFlagsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    )
    await expect_error(
        flags.ListFlags(pb.ListFlagsRequest(page_token="Zm9yZ2Vk")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    page = await flags.ListFlags(pb.ListFlagsRequest(page_size=1))
    assert page.next_page_token
    await expect_error(
        flags.ListFlags(pb.ListFlagsRequest(page_token=page.next_page_token, show_archived=True)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )


# --- Update ----------------------------------------------------------------------------------


async def test_update_applies_only_the_masked_fields(flags, sql):
    await create(flags, description="old", default_enabled=False)
    only_desc = await flags.UpdateFlag(
        pb.UpdateFlagRequest(
            key="checkout.new-flow",
            description="new",
            default_enabled=True,
            update_mask=FieldMask(paths=["description"]),
        )
    )
    assert (only_desc.flag.description, only_desc.flag.default_enabled) == ("new", False)
    assert only_desc.flag.etag == "2"
    only_default = await flags.UpdateFlag(
        pb.UpdateFlagRequest(
            key="checkout.new-flow",
            default_enabled=True,
            update_mask=FieldMask(paths=["default_enabled"]),
            etag="2",
        )
    )
    assert (only_default.flag.description, only_default.flag.default_enabled) == ("new", True)
    both = await flags.UpdateFlag(
        pb.UpdateFlagRequest(key="checkout.new-flow", description="", default_enabled=False)
    )
    assert (both.flag.description, both.flag.default_enabled, both.flag.etag) == ("", False, "4")
    assert both.flag.update_time.ToDatetime() > both.flag.create_time.ToDatetime()
    assert [e["version"] for e in events(sql)] == [1, 2, 3, 4]
    assert events(sql)[-1]["description"] == "" and events(sql)[-1]["default_enabled"] is False


async def test_update_that_changes_nothing_writes_nothing(flags, sql):
    await create(flags, description="same", default_enabled=True)
    before = state(sql)
    same = await flags.UpdateFlag(
        pb.UpdateFlagRequest(key="checkout.new-flow", description="same", default_enabled=True)
    )
    assert same.flag.etag == "1"
    assert state(sql) == before


async def test_update_with_stale_etag_is_aborted_and_writes_nothing(flags, sql):
    await create(flags)
    await flags.UpdateFlag(pb.UpdateFlagRequest(key="checkout.new-flow", description="v2"))
    before = state(sql)
    failure = await expect_error(
        flags.UpdateFlag(pb.UpdateFlagRequest(key="checkout.new-flow", description="v3", etag="1")),
        grpc.StatusCode.ABORTED,
    )
    assert failure.reason == "ETAG_MISMATCH"
    assert state(sql) == before


@pytest.mark.parametrize(
    "path",
    [
        "key",
        "enabled_tenant_ids",
        "disabled_tenant_ids",
        "archived",
        "create_time",
        "update_time",
        "etag",
        "nope",
        "Description",
    ],
)
async def test_update_mask_naming_an_unknown_or_immutable_field(flags, sql, path):
    await create(flags)
    before = state(sql)
    failure = await expect_error(
        flags.UpdateFlag(
            pb.UpdateFlagRequest(
                key="checkout.new-flow",
                description="x",
                update_mask=FieldMask(paths=["description", path]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "update_mask",
    )
    assert path in failure.fields["update_mask"]
    assert state(sql) == before


BAD_UPDATES = [
    pytest.param(dict(key="Bad"), "key", id="bad-key"),
    pytest.param(dict(key="checkout.new-flow", description="d" * 2001), "description", id="desc"),
    pytest.param(dict(key="checkout.new-flow", etag="abc"), "etag", id="forged-etag"),
]


@pytest.mark.parametrize(("fields", "bad_field"), BAD_UPDATES)
async def test_bad_update_is_rejected_and_writes_nothing(flags, sql, fields, bad_field):
    await create(flags)
    before = state(sql)
    await expect_error(
        flags.UpdateFlag(pb.UpdateFlagRequest(**fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
        bad_field,
    )
    assert state(sql) == before


async def test_changing_an_archived_flag_is_a_failed_precondition(flags, sql):
    await create(flags)
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow"))
    before = state(sql)
    failure = await expect_error(
        flags.UpdateFlag(pb.UpdateFlagRequest(key="checkout.new-flow", description="x")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "archived" in failure.message
    await expect_error(
        flags.SetTenantOverride(
            pb.SetTenantOverrideRequest(
                key="checkout.new-flow", tenant_id=TENANT_A, override=ENABLED
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert state(sql) == before


async def test_update_of_unknown_flag_is_not_found(flags, sql):
    before = state(sql)
    await expect_error(
        flags.UpdateFlag(pb.UpdateFlagRequest(key="nope", description="x")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        flags.SetTenantOverride(
            pb.SetTenantOverrideRequest(key="nope", tenant_id=TENANT_A, override=ENABLED)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        flags.ArchiveFlag(pb.ArchiveFlagRequest(key="nope")), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        flags.UnarchiveFlag(pb.UnarchiveFlagRequest(key="nope")), grpc.StatusCode.NOT_FOUND
    )
    assert state(sql) == before


# --- Tenant overrides -----------------------------------------------------------------------


async def test_overrides_move_a_tenant_between_lists(flags, sql):
    await create(flags)
    flag = await override(flags, TENANT_B, ENABLED)
    flag = await override(flags, TENANT_A, ENABLED)
    assert list(flag.enabled_tenant_ids) == [TENANT_A, TENANT_B]  # sorted
    flag = await override(flags, TENANT_A, DISABLED)
    assert list(flag.enabled_tenant_ids) == [TENANT_B]
    assert list(flag.disabled_tenant_ids) == [TENANT_A]
    flag = await override(flags, TENANT_A, INHERIT)
    assert (list(flag.enabled_tenant_ids), list(flag.disabled_tenant_ids)) == ([TENANT_B], [])
    assert flag.etag == "5"
    last = events(sql)[-1]
    assert last["enabled_tenant_ids"] == [TENANT_B] and last["disabled_tenant_ids"] == []
    assert last["version"] == 5 and len(events(sql)) == 5


async def test_tenant_ids_are_stored_in_canonical_upper_case(flags):
    await create(flags)
    flag = await override(flags, TENANT_A.lower(), ENABLED)
    assert list(flag.enabled_tenant_ids) == [TENANT_A]
    same = await override(flags, TENANT_A, ENABLED)
    assert same.etag == flag.etag


async def test_override_that_changes_nothing_writes_nothing(flags, sql):
    await create(flags)
    await override(flags, TENANT_A, DISABLED)
    before = state(sql)
    again = await override(flags, TENANT_A, DISABLED)
    inherit_other = await override(flags, TENANT_B, INHERIT)
    assert again.etag == inherit_other.etag == "2"
    assert state(sql) == before


async def test_override_with_etag_is_conditional(flags, sql):
    created = await create(flags)
    first = await override(flags, TENANT_A, ENABLED, etag=created.etag)
    assert first.etag == "2"
    before = state(sql)
    await expect_error(
        flags.SetTenantOverride(
            pb.SetTenantOverrideRequest(
                key="checkout.new-flow", tenant_id=TENANT_B, override=ENABLED, etag=created.etag
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert state(sql) == before


BAD_OVERRIDES = [
    pytest.param(dict(tenant_id="tenant-a", override=ENABLED), "tenant_id", id="not-ulid"),
    pytest.param(dict(tenant_id="", override=ENABLED), "tenant_id", id="no-tenant"),
    pytest.param(dict(tenant_id="8" + TENANT_A[1:], override=ENABLED), "tenant_id", id="overflow"),
    pytest.param(dict(tenant_id=TENANT_A), "override", id="unspecified"),
    pytest.param(dict(tenant_id=TENANT_A, override=9), "override", id="unknown-enum"),
    pytest.param(dict(key="Bad", tenant_id=TENANT_A, override=ENABLED), "key", id="bad-key"),
    pytest.param(dict(tenant_id=TENANT_A, override=ENABLED, etag="x1"), "etag", id="forged-etag"),
]


@pytest.mark.parametrize(("fields", "bad_field"), BAD_OVERRIDES)
async def test_bad_override_is_rejected_and_writes_nothing(flags, sql, fields, bad_field):
    await create(flags)
    before = state(sql)
    request = pb.SetTenantOverrideRequest(key="checkout.new-flow")
    for name, value in fields.items():
        setattr(request, name, value)
    await expect_error(
        flags.SetTenantOverride(request), grpc.StatusCode.INVALID_ARGUMENT, bad_field
    )
    assert state(sql) == before


async def test_any_override_sequence_keeps_lists_equal_to_the_rules(flags, sql):
    """A random walk of overrides through the server matches domain.flags step by step."""
    await create(flags, default_enabled=True)
    rng = random.Random(20261124)
    tenants = [f"01JT00000000000000000000{i:02d}" for i in range(6)]
    how = {ENABLED: Override.ENABLED, DISABLED: Override.DISABLED, INHERIT: Override.INHERIT}
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    version = 1
    for _ in range(60):
        tenant, choice = rng.choice(tenants), rng.choice(list(how))
        flag = await override(flags, tenant, choice)
        expected = apply_override(enabled, disabled, tenant, how[choice])
        if expected != (enabled, disabled):
            version += 1
        enabled, disabled = expected
        assert (tuple(flag.enabled_tenant_ids), tuple(flag.disabled_tenant_ids)) == expected
        assert flag.etag == str(version)
        answer = await flags.EvaluateFlag(
            pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id=tenant)
        )
        assert answer.enabled is (choice != DISABLED)
    assert len(events(sql)) == version


async def test_fifty_concurrent_overrides_for_fifty_tenants_all_survive(flags, sql):
    await create(flags)
    tenants = [f"01JT{i:022d}" for i in range(50)]
    results = await asyncio.gather(
        *(override(flags, t, ENABLED if i % 2 else DISABLED) for i, t in enumerate(tenants))
    )
    final = (await flags.GetFlag(pb.GetFlagRequest(key="checkout.new-flow"))).flag
    assert sorted(final.enabled_tenant_ids) == [t for i, t in enumerate(tenants) if i % 2]
    assert sorted(final.disabled_tenant_ids) == [t for i, t in enumerate(tenants) if not i % 2]
    assert list(final.enabled_tenant_ids) == sorted(final.enabled_tenant_ids)
    assert final.etag == "51"
    assert sorted(int(r.etag) for r in results) == list(range(2, 52))
    versions = [e["version"] for e in events(sql)]
    assert versions == list(range(1, 52))  # create + 50, in commit order, no duplicate
    overrides = events(sql)[1:]
    assert len(overrides) == 50
    # Each event's lists grow by exactly one tenant: no writer overwrote another.
    sizes = [len(e["enabled_tenant_ids"]) + len(e["disabled_tenant_ids"]) for e in overrides]
    assert sizes == list(range(1, 51))


# --- Archive ---------------------------------------------------------------------------------


async def test_archive_and_unarchive(flags, sql):
    created = await create(flags, default_enabled=True)
    archived = (
        await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow", etag=created.etag))
    ).flag
    assert archived.archived and archived.etag == "2"
    before = state(sql)
    again = (await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow"))).flag
    assert again == archived  # no-op: same version, no event
    assert state(sql) == before
    await expect_error(
        flags.UnarchiveFlag(pb.UnarchiveFlagRequest(key="checkout.new-flow", etag="1")),
        grpc.StatusCode.ABORTED,
    )
    assert state(sql) == before
    restored = (
        await flags.UnarchiveFlag(pb.UnarchiveFlagRequest(key="checkout.new-flow", etag="2"))
    ).flag
    assert not restored.archived and restored.etag == "3"
    assert [e["archived"] for e in events(sql)] == [False, True, False]
    again = (await flags.UnarchiveFlag(pb.UnarchiveFlagRequest(key="checkout.new-flow"))).flag
    assert again.etag == "3"
    await expect_error(
        flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow", etag="7x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "etag",
    )
    await expect_error(
        flags.ArchiveFlag(pb.ArchiveFlagRequest(key="Bad")), grpc.StatusCode.INVALID_ARGUMENT, "key"
    )


# --- Evaluation ------------------------------------------------------------------------------


async def test_evaluate_gives_the_answer_and_its_reason(flags):
    await create(flags, default_enabled=True)
    await override(flags, TENANT_A, DISABLED)
    other = "01JC0000000000000000000CCC"

    async def evaluate(tenant: str) -> tuple[bool, int]:
        r = await flags.EvaluateFlag(
            pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id=tenant)
        )
        return r.enabled, r.reason

    assert await evaluate(TENANT_A) == (False, pb.EVALUATION_REASON_TENANT_DISABLED)
    assert await evaluate(other) == (True, pb.EVALUATION_REASON_DEFAULT)
    await flags.UpdateFlag(
        pb.UpdateFlagRequest(
            key="checkout.new-flow",
            default_enabled=False,
            update_mask=FieldMask(paths=["default_enabled"]),
        )
    )
    await override(flags, TENANT_B, ENABLED)
    assert await evaluate(TENANT_B) == (True, pb.EVALUATION_REASON_TENANT_ENABLED)
    assert await evaluate(other) == (False, pb.EVALUATION_REASON_DEFAULT)
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow"))
    assert await evaluate(TENANT_B) == (False, pb.EVALUATION_REASON_ARCHIVED)


async def test_evaluate_bad_input(flags):
    await create(flags)
    await expect_error(
        flags.EvaluateFlag(pb.EvaluateFlagRequest(key="nope", tenant_id=TENANT_A)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        flags.EvaluateFlag(pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id="t1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id",
    )
    await expect_error(
        flags.EvaluateFlag(pb.EvaluateFlagRequest(key="checkout.new-flow")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id",
    )
    await expect_error(
        flags.EvaluateFlag(pb.EvaluateFlagRequest(key="X", tenant_id=TENANT_A)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    )


async def test_evaluate_flags_in_one_call(flags):
    await create(flags, "a.on", default_enabled=True)
    await create(flags, "b.off")
    await create(flags, "c.gone", default_enabled=True)
    await override(flags, TENANT_A, ENABLED, key="b.off")
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="c.gone"))

    every = await flags.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id=TENANT_A))
    assert dict(every.evaluations) == {
        "a.on": pb.Evaluation(enabled=True, reason=pb.EVALUATION_REASON_DEFAULT),
        "b.off": pb.Evaluation(enabled=True, reason=pb.EVALUATION_REASON_TENANT_ENABLED),
    }
    assert list(every.missing_keys) == []

    asked = await flags.EvaluateFlags(
        pb.EvaluateFlagsRequest(
            tenant_id=TENANT_B, keys=["zz.missing", "c.gone", "b.off", "aa.missing", "b.off"]
        )
    )
    assert dict(asked.evaluations) == {
        "c.gone": pb.Evaluation(enabled=False, reason=pb.EVALUATION_REASON_ARCHIVED),
        "b.off": pb.Evaluation(enabled=False, reason=pb.EVALUATION_REASON_DEFAULT),
    }
    assert list(asked.missing_keys) == ["zz.missing", "aa.missing"]


async def test_evaluate_flags_limits_and_bad_keys(flags):
    many = [f"k{i}" for i in range(1000)]
    ok = await flags.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=many))
    assert len(ok.missing_keys) == 1000
    await expect_error(
        flags.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=[*many, "k1000"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keys",
    )
    await expect_error(
        flags.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=["ok", "Not ok"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keys[1]",
    )
    await expect_error(
        flags.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id="nope")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id",
    )


async def test_tenant_admins_evaluate_only_for_their_own_tenant(flags):
    await create(flags, default_enabled=True)
    own = await flags.EvaluateFlag(
        pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id=TENANT_A),
        metadata=as_tenant_admin(TENANT_A),
    )
    assert own.enabled is True
    await expect_error(
        flags.EvaluateFlag(
            pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id=TENANT_B),
            metadata=as_tenant_admin(TENANT_A),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    batch = await flags.EvaluateFlags(
        pb.EvaluateFlagsRequest(tenant_id=TENANT_A), metadata=as_tenant_admin(TENANT_A)
    )
    assert set(batch.evaluations) == {"checkout.new-flow"}
    await expect_error(
        flags.EvaluateFlags(
            pb.EvaluateFlagsRequest(tenant_id=TENANT_B), metadata=as_tenant_admin(TENANT_A)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # A service evaluates for any tenant.
    service = (("x-roles", SERVICE), ("x-sub", "01JAD000000000000000000SVC"))
    other = await flags.EvaluateFlag(
        pb.EvaluateFlagRequest(key="checkout.new-flow", tenant_id=TENANT_B), metadata=service
    )
    assert other.enabled is True


# --- Atomicity -------------------------------------------------------------------------------


async def test_a_change_whose_outbox_row_fails_leaves_nothing(flags, sql):
    """The outbox insert fails after the flag row was written: both roll back."""
    await create(flags)
    await override(flags, TENANT_B, ENABLED)
    # NOT VALID: the rows already there stay; every new flag event is refused.
    sql.execute(
        "ALTER TABLE outbox ADD CONSTRAINT ck_block"
        " CHECK (subject <> 'platform_admin.flag.changed') NOT VALID"
    )
    before = state(sql)
    failing = [
        flags.CreateFlag(pb.CreateFlagRequest(key="other.flag")),
        flags.SetTenantOverride(
            pb.SetTenantOverrideRequest(
                key="checkout.new-flow", tenant_id=TENANT_A, override=DISABLED
            )
        ),
        flags.UpdateFlag(pb.UpdateFlagRequest(key="checkout.new-flow", description="changed")),
        flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow")),
    ]
    for call in failing:
        failure = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert "constraint" in failure.message
        assert state(sql) == before
    sql.execute("ALTER TABLE outbox DROP CONSTRAINT ck_block")
    flag = await override(flags, TENANT_A, DISABLED)
    assert flag.etag == "3" and list(flag.disabled_tenant_ids) == [TENANT_A]
    assert [e["version"] for e in events(sql)] == [1, 2, 3]


# --- WatchFlags plug-in point ----------------------------------------------------------------


class _FakeWatch:
    """Stands in for server/rpc/watch.py: echoes the request's keys as snapshot flags."""

    async def WatchFlags(self, request, context):
        for i, key in enumerate(request.keys):
            yield pb.WatchFlagsResponse(cursor=str(i), snapshot=pb.Flag(key=key))


@asynccontextmanager
async def serving(servicer: FlagServicer) -> AsyncIterator[flag_pb2_grpc.FlagServiceStub]:
    """``servicer`` alone on a loopback server (no read model), and a stub. The pipeline
    (with authentication off) binds the principal, which servicers need."""
    server = grpc.aio.server(interceptors=[Pipeline(AllowAll(), 30.0)])
    flag_pb2_grpc.add_FlagServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield flag_pb2_grpc.FlagServiceStub(channel)
    finally:
        await server.stop(0)


async def _watch_through(servicer: FlagServicer, keys: list[str]) -> list[pb.WatchFlagsResponse]:
    async with serving(servicer) as stub:
        request = pb.WatchFlagsRequest(keys=keys)
        return [m async for m in stub.WatchFlags(request, timeout=10)]


async def test_watch_flags_delegates_to_the_watch_object(app):
    got = await _watch_through(FlagServicer(app.db, watch=_FakeWatch()), ["a", "b"])
    assert [(m.cursor, m.snapshot.key) for m in got] == [("0", "a"), ("1", "b")]


async def test_watch_flags_is_unimplemented_without_a_watch(app):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _watch_through(FlagServicer(app.db), [])
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_change_stream_shows_exactly_what_the_rpcs_return(flags):
    """WatchFlags (fed by the outbox payloads) and the unary RPCs agree field for field."""
    created = await create(flags, description="stream me", default_enabled=True)
    await override(flags, TENANT_B, DISABLED)
    current = (await flags.GetFlag(pb.GetFlagRequest(key="checkout.new-flow"))).flag
    stream = flags.WatchFlags(pb.WatchFlagsRequest(keys=["checkout.new-flow"]), timeout=20)
    snapshot = await stream.read()
    assert snapshot.snapshot == current and created.etag == "1"
    end = await stream.read()
    assert end.HasField("snapshot_end")
    changes = [
        await override(flags, TENANT_A, ENABLED),
        (await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="checkout.new-flow"))).flag,
    ]
    seen = []
    while len(seen) < len(changes):
        message = await stream.read()
        if message.HasField("flag_changed"):
            seen.append(message.flag_changed)
    stream.cancel()
    assert seen == changes


async def test_evaluations_from_memory_agree_with_the_database(app, flags):
    """The server answers Evaluate* from its in-memory read model; a servicer without one
    reads the rows. Both must give the same answers for every tenant and key list."""
    tenants = [TENANT_A, TENANT_B, "01JC0000000000000000000CCC"]
    for i in range(6):
        await create(flags, f"f{i}", default_enabled=bool(i % 2))
    await override(flags, TENANT_A, ENABLED, key="f0")
    await override(flags, TENANT_A, DISABLED, key="f1")
    await override(flags, TENANT_B, ENABLED, key="f1")
    await override(flags, TENANT_B, DISABLED, key="f4")
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="f5"))
    await flags.ArchiveFlag(pb.ArchiveFlagRequest(key="f4"))
    key_lists = [[], ["f0", "f1"], ["f5", "nope", "f3", "f0", "f5"], [f"f{i}" for i in range(6)]]
    async with serving(FlagServicer(app.db)) as from_rows:
        for tenant in tenants:
            for key in [f"f{i}" for i in range(6)]:
                request = pb.EvaluateFlagRequest(key=key, tenant_id=tenant)
                assert await flags.EvaluateFlag(request) == await from_rows.EvaluateFlag(request)
            for keys in key_lists:
                request = pb.EvaluateFlagsRequest(tenant_id=tenant, keys=keys)
                memory = await flags.EvaluateFlags(request)
                rows = await from_rows.EvaluateFlags(request)
                assert dict(memory.evaluations) == dict(rows.evaluations)
                assert list(memory.missing_keys) == list(rows.missing_keys)
        archived = await from_rows.EvaluateFlag(
            pb.EvaluateFlagRequest(key="f4", tenant_id=TENANT_B)
        )
        assert archived.reason == pb.EVALUATION_REASON_ARCHIVED


async def test_hot_reads_called_directly_return_messages_like_the_wire(app, flags):
    """The encoded fast path stays behind its seam (server/rpc/encoded.py): a direct call of
    the servicer method gets a real message, equal to what a gRPC client decodes."""
    await create(flags, "f0", default_enabled=True)
    await override(flags, TENANT_A, DISABLED, key="f0")
    servicer = FlagServicer(app.db, read_model=app.read_model)
    # Outside the pipeline nobody is bound by default: the direct call says who it is.
    token = principal.bind(principal.ANONYMOUS_ADMIN)
    try:
        directs = [
            await servicer.EvaluateFlags(pb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=k), None)
            for k in ([], ["f0", "nope"])
        ]
    finally:
        principal.unbind(token)
    for keys, direct in zip(([], ["f0", "nope"]), directs, strict=True):
        request = pb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=keys)
        assert type(direct) is pb.EvaluateFlagsResponse
        assert direct == await flags.EvaluateFlags(request)
        assert direct.evaluations["f0"].reason == pb.EVALUATION_REASON_TENANT_DISABLED
