"""ConfigService through a real server and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime

import grpc
import psycopg
import pytest
from platform_admin.v1 import config_pb2 as pb

from domain.config_keys import ALLOW_LIST, deserialize
from tests.helpers import TENANT_A, TENANT_B, expect_error

PLATFORM = pb.CONFIG_SCOPE_PLATFORM
TENANT = pb.CONFIG_SCOPE_TENANT
NODE = pb.CONFIG_SCOPE_NODE
PWD = "global.password_min_length"


def counts(sql: psycopg.Connection) -> tuple[int, int, int]:
    row = sql.execute(
        "SELECT (SELECT count(*) FROM platform_configs), (SELECT count(*) FROM config_history),"
        " (SELECT count(*) FROM outbox)"
    ).fetchone()
    assert row is not None
    return row


async def test_list_config_keys_describes_the_allow_list(configs):
    response = await configs.ListConfigKeys(pb.ListConfigKeysRequest())
    by_key = {k.key: k for k in response.keys}
    assert set(by_key) == set(ALLOW_LIST)
    pwd = by_key[PWD]
    assert pwd.value_type == pb.CONFIG_VALUE_TYPE_INTEGER
    assert (pwd.min_value, pwd.max_value) == (8, 128)
    assert list(pwd.allowed_scopes) == [PLATFORM, TENANT]
    assert by_key["email.from_address"].string_format == "email"
    assert by_key["email.smtp_port"].max_value == 65535


def test_seeded_platform_rows_match_the_allow_list_defaults(sql):
    rows = sql.execute(
        "SELECT key, value FROM platform_configs WHERE scope = 'PLATFORM'"
    ).fetchall()
    assert {k: deserialize(v) for k, v in rows} == {k: s.default for k, s in ALLOW_LIST.items()}


async def test_set_get_and_resolve_across_scopes(configs, sql):
    before = counts(sql)
    tenant = await configs.SetConfig(
        pb.SetConfigRequest(
            key=PWD,
            scope=TENANT,
            tenant_id=TENANT_A,
            value=pb.ConfigValue(int_value=16),
            description="stricter for A",
        )
    )
    assert tenant.config.etag == "1" and tenant.config.value.int_value == 16
    got = await configs.GetConfig(pb.GetConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A))
    assert got.config == tenant.config
    assert counts(sql) == (before[0] + 1, before[1] + 1, before[2] + 1)

    resolved = await configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A))
    assert (resolved.value.int_value, resolved.source_scope) == (16, TENANT)
    other = await configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_B))
    assert (other.value.int_value, other.source_scope) == (12, PLATFORM)

    await configs.SetConfig(
        pb.SetConfigRequest(
            key="email.smtp_port",
            scope=NODE,
            node_id="node-7",
            value=pb.ConfigValue(int_value=2525),
        )
    )
    node = await configs.ResolveConfig(
        pb.ResolveConfigRequest(key="email.smtp_port", tenant_id=TENANT_A, node_id="node-7")
    )
    assert (node.value.int_value, node.source_scope) == (2525, NODE)


async def test_resolution_falls_back_to_the_default_when_rows_are_archived(configs):
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=PLATFORM))
    resolved = await configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD))
    assert (resolved.value.int_value, resolved.source_scope) == (12, pb.CONFIG_SCOPE_UNSPECIFIED)
    await configs.SetConfig(
        pb.SetConfigRequest(
            key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=20)
        )
    )
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A))
    resolved = await configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A))
    assert resolved.source_scope == pb.CONFIG_SCOPE_UNSPECIFIED
    await configs.UnarchiveConfig(
        pb.UnarchiveConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A)
    )
    resolved = await configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A))
    assert (resolved.value.int_value, resolved.source_scope) == (20, TENANT)


async def test_resolve_configs_returns_every_key_in_one_call(configs):
    await configs.SetConfig(
        pb.SetConfigRequest(
            key="global.mfa_required_default",
            scope=TENANT,
            tenant_id=TENANT_A,
            value=pb.ConfigValue(bool_value=True),
        )
    )
    response = await configs.ResolveConfigs(pb.ResolveConfigsRequest(tenant_id=TENANT_A))
    by_key = {c.key: c for c in response.configs}
    assert set(by_key) == set(ALLOW_LIST)
    assert by_key["global.mfa_required_default"].value.bool_value is True
    assert by_key["global.mfa_required_default"].source_scope == TENANT
    assert by_key["email.from_address"].value.string_value == "no-reply@example.com"
    some = await configs.ResolveConfigs(pb.ResolveConfigsRequest(keys=[PWD]))
    assert [c.key for c in some.configs] == [PWD]
    await expect_error(
        configs.ResolveConfigs(pb.ResolveConfigsRequest(keys=["nope"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keys[0]",
    )


async def test_history_is_newest_first_and_paginates(configs):
    for length in (9, 10, 11, 12, 13):
        await configs.SetConfig(
            pb.SetConfigRequest(
                key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=length)
            )
        )
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A))
    seen, token = [], ""
    while True:
        page = await configs.ListConfigHistory(
            pb.ListConfigHistoryRequest(
                key=PWD, scope=TENANT, tenant_id=TENANT_A, page_size=4, page_token=token
            )
        )
        seen.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.action for e in seen] == [pb.CONFIG_CHANGE_ACTION_ARCHIVE] + [
        pb.CONFIG_CHANGE_ACTION_SET
    ] * 5
    assert [e.new_value.int_value for e in seen[1:]] == [13, 12, 11, 10, 9]
    assert [e.old_value.int_value for e in seen[1:5]] == [12, 11, 10, 9]
    assert not seen[-1].HasField("old_value")
    assert all(e.id.startswith("cph_") for e in seen)
    times = [e.change_time.ToDatetime() for e in seen]
    assert times == sorted(times, reverse=True)


async def test_list_configs_filters_and_paginates(configs):
    for i in range(3):
        tenant = f"01JC00000000000000000000{i:02d}"
        await configs.SetConfig(
            pb.SetConfigRequest(
                key=PWD, scope=TENANT, tenant_id=tenant, value=pb.ConfigValue(int_value=9 + i)
            )
        )
    everything, token = [], ""
    while True:
        page = await configs.ListConfigs(pb.ListConfigsRequest(page_size=2, page_token=token))
        assert len(page.configs) <= 2
        everything.extend(page.configs)
        token = page.next_page_token
        if not token:
            break
    assert len(everything) == len(ALLOW_LIST) + 3
    assert len({(c.key, c.scope, c.tenant_id) for c in everything}) == len(everything)
    tenants = await configs.ListConfigs(pb.ListConfigsRequest(scope=TENANT))
    assert len(tenants.configs) == 3
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=PLATFORM))
    live = await configs.ListConfigs(pb.ListConfigsRequest(scope=PLATFORM))
    assert PWD not in {c.key for c in live.configs}
    archived = await configs.ListConfigs(pb.ListConfigsRequest(scope=PLATFORM, show_archived=True))
    assert PWD in {c.key for c in archived.configs}


async def test_etags_make_writes_conditional(configs, sql):
    first = await configs.SetConfig(
        pb.SetConfigRequest(
            key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=10)
        )
    )
    second = await configs.SetConfig(
        pb.SetConfigRequest(
            key=PWD,
            scope=TENANT,
            tenant_id=TENANT_A,
            value=pb.ConfigValue(int_value=11),
            etag=first.config.etag,
        )
    )
    assert second.config.etag == "2"
    before = counts(sql)
    await expect_error(
        configs.SetConfig(
            pb.SetConfigRequest(
                key=PWD,
                scope=TENANT,
                tenant_id=TENANT_A,
                value=pb.ConfigValue(int_value=12),
                etag=first.config.etag,
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    await expect_error(
        configs.ArchiveConfig(
            pb.ArchiveConfigRequest(
                key=PWD, scope=TENANT, tenant_id=TENANT_A, etag=first.config.etag
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert counts(sql) == before
    got = await configs.GetConfig(pb.GetConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A))
    assert got.config.value.int_value == 11


async def test_setting_an_archived_row_is_a_failed_precondition(configs, sql):
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=PLATFORM))
    before = counts(sql)
    await expect_error(
        configs.SetConfig(
            pb.SetConfigRequest(key=PWD, scope=PLATFORM, value=pb.ConfigValue(int_value=14))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert counts(sql) == before


async def test_twenty_concurrent_writers_with_one_etag_one_wins(configs, sql):
    base = await configs.GetConfig(pb.GetConfigRequest(key=PWD, scope=PLATFORM))
    history_before = counts(sql)[1]

    async def attempt(i: int) -> grpc.StatusCode:
        try:
            await configs.SetConfig(
                pb.SetConfigRequest(
                    key=PWD,
                    scope=PLATFORM,
                    value=pb.ConfigValue(int_value=20 + i),
                    etag=base.config.etag,
                )
            )
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()

    outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert outcomes.count(grpc.StatusCode.OK) == 1
    assert outcomes.count(grpc.StatusCode.ABORTED) == 19
    assert counts(sql)[1] == history_before + 1


async def test_concurrent_creates_without_etag_all_land_in_history(configs, sql):
    await asyncio.gather(
        *(
            configs.SetConfig(
                pb.SetConfigRequest(
                    key=PWD,
                    scope=TENANT,
                    tenant_id=TENANT_B,
                    value=pb.ConfigValue(int_value=30 + i),
                )
            )
            for i in range(10)
        )
    )
    (rows,) = sql.execute(
        "SELECT count(*) FROM config_history WHERE tenant_id = %s", (TENANT_B,)
    ).fetchone()
    assert rows == 10
    (version,) = sql.execute(
        "SELECT version FROM platform_configs WHERE tenant_id = %s", (TENANT_B,)
    ).fetchone()
    assert version == 10


BAD_SETS = [
    pytest.param(
        dict(key="global.nope", scope=PLATFORM, value=pb.ConfigValue(int_value=1)),
        "key",
        id="unknown-key",
    ),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, value=pb.ConfigValue(string_value="12")),
        "value",
        id="wrong-type",
    ),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, value=pb.ConfigValue(int_value=7)), "value", id="below-min"
    ),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, value=pb.ConfigValue(int_value=2**62)), "value", id="huge"
    ),
    pytest.param(
        dict(key="email.smtp_port", scope=PLATFORM, value=pb.ConfigValue(int_value=0)),
        "value",
        id="port-zero",
    ),
    pytest.param(
        dict(
            key="email.from_address",
            scope=PLATFORM,
            value=pb.ConfigValue(string_value="not an address"),
        ),
        "value",
        id="email",
    ),
    pytest.param(
        dict(key="email.smtp_host", scope=PLATFORM, value=pb.ConfigValue(string_value="h" * 300)),
        "value",
        id="oversized",
    ),
    pytest.param(
        dict(
            key="email.from_address",
            scope=TENANT,
            tenant_id=TENANT_A,
            value=pb.ConfigValue(string_value="a@b.co"),
        ),
        "scope",
        id="scope-not-allowed",
    ),
    pytest.param(
        dict(key=PWD, scope=TENANT, value=pb.ConfigValue(int_value=12)),
        "tenant_id",
        id="tenant-missing",
    ),
    pytest.param(
        dict(key=PWD, scope=TENANT, tenant_id="tenant-a", value=pb.ConfigValue(int_value=12)),
        "tenant_id",
        id="tenant-not-ulid",
    ),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=12)),
        "tenant_id",
        id="tenant-on-platform",
    ),
    pytest.param(
        dict(key="email.smtp_port", scope=NODE, value=pb.ConfigValue(int_value=25)),
        "node_id",
        id="node-missing",
    ),
    pytest.param(
        dict(
            key="email.smtp_port", scope=NODE, node_id="n" * 101, value=pb.ConfigValue(int_value=25)
        ),
        "node_id",
        id="node-oversized",
    ),
    pytest.param(dict(key=PWD, value=pb.ConfigValue(int_value=12)), "scope", id="no-scope"),
    pytest.param(dict(key=PWD, scope=PLATFORM), "value", id="no-value"),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, value=pb.ConfigValue(int_value=12), description="d" * 2001),
        "description",
        id="long-description",
    ),
    pytest.param(
        dict(key=PWD, scope=PLATFORM, value=pb.ConfigValue(int_value=12), etag="abc"),
        "etag",
        id="forged-etag",
    ),
]


@pytest.mark.parametrize(("fields", "bad_field"), BAD_SETS)
async def test_bad_set_config_is_rejected_and_writes_nothing(configs, sql, fields, bad_field):
    before = counts(sql)
    await expect_error(
        configs.SetConfig(pb.SetConfigRequest(**fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
        bad_field,
    )
    assert counts(sql) == before


async def test_bad_reads_are_clear_errors(configs):
    await expect_error(
        configs.GetConfig(pb.GetConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        configs.ListConfigs(pb.ListConfigsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    )
    await expect_error(
        configs.ListConfigs(pb.ListConfigsRequest(page_token="Zm9yZ2Vk")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    page = await configs.ListConfigs(pb.ListConfigsRequest(page_size=1))
    await expect_error(
        configs.ListConfigs(
            pb.ListConfigsRequest(page_size=1, page_token=page.next_page_token, show_archived=True)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        configs.ListConfigHistory(
            pb.ListConfigHistoryRequest(key=PWD, scope=PLATFORM, page_token="!!!")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        configs.ResolveConfig(pb.ResolveConfigRequest(key=PWD, tenant_id="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id",
    )
    await expect_error(
        configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_set_that_fails_half_way_leaves_nothing(configs, sql):
    """The outbox insert fails after the value and history were written: all roll back."""
    sql.execute(
        "ALTER TABLE outbox ADD CONSTRAINT ck_block"
        " CHECK (subject <> 'platform_admin.config.changed')"
    )
    before = counts(sql)
    await expect_error(
        configs.SetConfig(
            pb.SetConfigRequest(
                key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=40)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert counts(sql) == before
    sql.execute("ALTER TABLE outbox DROP CONSTRAINT ck_block")
    sql.execute("ALTER TABLE config_history ADD CONSTRAINT ck_block CHECK (new_value <> '41')")
    await expect_error(
        configs.SetConfig(
            pb.SetConfigRequest(
                key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=41)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert counts(sql) == before


async def test_every_change_writes_one_outbox_event_with_full_state(configs, sql):
    set_ = await configs.SetConfig(
        pb.SetConfigRequest(
            key=PWD, scope=TENANT, tenant_id=TENANT_A, value=pb.ConfigValue(int_value=15)
        )
    )
    await configs.ArchiveConfig(pb.ArchiveConfigRequest(key=PWD, scope=TENANT, tenant_id=TENANT_A))
    rows = sql.execute(
        "SELECT subject, tenant_id, payload FROM outbox ORDER BY created_at"
    ).fetchall()
    assert [r[0] for r in rows] == ["platform_admin.config.changed"] * 2
    assert rows[0][1] == TENANT_A
    assert rows[0][2]["value"] == 15 and rows[0][2]["version"] == int(set_.config.etag)
    assert rows[1][2]["archived"] is True and rows[1][2]["version"] == 2


async def test_concurrent_writers_keep_history_in_commit_order(configs, sql):
    """Writers of one row queue on its lock; each must stamp the time it wrote, not the time
    its transaction began, or a writer that waited records an earlier time than the write it
    waited behind: history misordered, update_time going backwards."""
    key = "global.session_max_absolute_minutes"
    writers, rounds = 40, 3
    version_of: dict[int, int] = {}
    time_of: dict[int, datetime] = {}
    for round_no in range(rounds):
        values = [100 + round_no * writers + i for i in range(writers)]
        answers = await asyncio.gather(
            *(
                configs.SetConfig(
                    pb.SetConfigRequest(
                        key=key,
                        scope=pb.CONFIG_SCOPE_PLATFORM,
                        value=pb.ConfigValue(int_value=v),
                    )
                )
                for v in values
            )
        )
        for value, answer in zip(values, answers, strict=True):
            version_of[value] = int(answer.config.etag)
            time_of[int(answer.config.etag)] = answer.config.update_time.ToDatetime()
    assert len(set(version_of.values())) == writers * rounds  # every write took effect
    # update_time rises with the version.
    times = [time_of[v] for v in sorted(time_of)]
    assert all(a < b for a, b in itertools.pairwise(times)), "update_time went backwards"
    # History, newest first, is in version order; its times are the rows' update times.
    entries = []
    token = ""
    while True:
        page = await configs.ListConfigHistory(
            pb.ListConfigHistoryRequest(
                key=key, scope=pb.CONFIG_SCOPE_PLATFORM, page_size=1000, page_token=token
            )
        )
        entries += page.entries
        token = page.next_page_token
        if not token:
            break
    versions = [version_of[e.new_value.int_value] for e in entries]
    assert versions == sorted(versions, reverse=True), "history is not in commit order"
    for entry in entries:
        version = version_of[entry.new_value.int_value]
        assert entry.change_time.ToDatetime() == time_of[version]
