"""The in-memory read model through real servers: read-your-writes and replica convergence.

Two App replicas share one database, as two processes (or two machines) would; a write
through one must be answered by the other within the tail latency, and by the writer at
once.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb

from domain import events
from domain.ids import new_ulid
from server.app import App
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.helpers import TENANT_A, TENANT_B, expect_error

PWD = "global.password_min_length"
TENANT = cpb.CONFIG_SCOPE_TENANT


@pytest.fixture
async def replica(db_url: str, settings: Settings, app: App) -> AsyncIterator[App]:
    """A second server process's worth of state (pool, tail, read model) on the same database."""
    other = App(replace(settings), db_url, authorizer=AllowAll())
    await other.start()
    yield other
    await other.stop(grace=0)


async def stubs(
    app: App,
) -> tuple[grpc.aio.Channel, config_pb2_grpc.ConfigServiceStub, flag_pb2_grpc.FlagServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return (
        channel,
        config_pb2_grpc.ConfigServiceStub(channel),
        flag_pb2_grpc.FlagServiceStub(channel),
    )


async def set_pwd(configs: config_pb2_grpc.ConfigServiceStub, tenant: str, value: int) -> None:
    await configs.SetConfig(
        cpb.SetConfigRequest(
            key=PWD, scope=TENANT, tenant_id=tenant, value=cpb.ConfigValue(int_value=value)
        )
    )


async def resolve_pwd(configs: config_pb2_grpc.ConfigServiceStub, tenant: str) -> int:
    answer = await configs.ResolveConfig(cpb.ResolveConfigRequest(key=PWD, tenant_id=tenant))
    return int(answer.value.int_value)


async def test_the_writer_answers_with_its_write_at_once(app: App):
    """Read-your-writes, without waiting for the change stream at all."""
    # Detach the model from the tail: whatever it shows now came from the write path.
    await asyncio.wait_for(app.read_model.attached.wait(), 10)
    app.read_model.stop()
    channel, configs, flags = await stubs(app)
    async with channel:
        for value in range(20, 40):
            await set_pwd(configs, TENANT_A, value)
            assert await resolve_pwd(configs, TENANT_A) == value
            batch = await configs.ResolveConfigs(cpb.ResolveConfigsRequest(tenant_id=TENANT_A))
            by_key = {c.key: c for c in batch.configs}
            assert by_key[PWD].value.int_value == value
            assert by_key[PWD].source_scope == TENANT
        assert await resolve_pwd(configs, TENANT_B) == 12  # the PLATFORM row

        await flags.CreateFlag(fpb.CreateFlagRequest(key="checkout.v2"))
        for override, enabled, reason in (
            (fpb.TENANT_OVERRIDE_ENABLED, True, fpb.EVALUATION_REASON_TENANT_ENABLED),
            (fpb.TENANT_OVERRIDE_DISABLED, False, fpb.EVALUATION_REASON_TENANT_DISABLED),
            (fpb.TENANT_OVERRIDE_INHERIT, False, fpb.EVALUATION_REASON_DEFAULT),
        ):
            await flags.SetTenantOverride(
                fpb.SetTenantOverrideRequest(
                    key="checkout.v2", tenant_id=TENANT_A, override=override
                )
            )
            one = await flags.EvaluateFlag(
                fpb.EvaluateFlagRequest(key="checkout.v2", tenant_id=TENANT_A)
            )
            assert (one.enabled, one.reason) == (enabled, reason)
            every = await flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_A))
            assert every.evaluations["checkout.v2"] == fpb.Evaluation(
                enabled=enabled, reason=reason
            )
            named = await flags.EvaluateFlags(
                fpb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=["checkout.v2", "nope"])
            )
            assert named.evaluations["checkout.v2"].reason == reason
            assert list(named.missing_keys) == ["nope"]

        await flags.UpdateFlag(fpb.UpdateFlagRequest(key="checkout.v2", default_enabled=True))
        every = await flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_B))
        assert every.evaluations["checkout.v2"].enabled is True
        await flags.ArchiveFlag(fpb.ArchiveFlagRequest(key="checkout.v2"))
        one = await flags.EvaluateFlag(
            fpb.EvaluateFlagRequest(key="checkout.v2", tenant_id=TENANT_B)
        )
        assert (one.enabled, one.reason) == (False, fpb.EVALUATION_REASON_ARCHIVED)
        every = await flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_B))
        assert "checkout.v2" not in every.evaluations  # every *live* flag
        await expect_error(
            flags.EvaluateFlag(fpb.EvaluateFlagRequest(key="missing.flag", tenant_id=TENANT_A)),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_a_write_through_one_replica_reaches_the_other_within_the_tail_latency(
    app: App, replica: App
):
    a_channel, a_configs, a_flags = await stubs(app)
    b_channel, b_configs, b_flags = await stubs(replica)
    latencies = []
    async with a_channel, b_channel:
        await a_flags.CreateFlag(fpb.CreateFlagRequest(key="search.fast"))
        for value in range(30, 50):
            await set_pwd(a_configs, TENANT_A, value)
            written = time.perf_counter()
            while await resolve_pwd(b_configs, TENANT_A) != value:
                assert time.perf_counter() - written < 5, "replica did not converge in 5 s"
                await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - written)

        override = fpb.TENANT_OVERRIDE_ENABLED
        await a_flags.SetTenantOverride(
            fpb.SetTenantOverrideRequest(key="search.fast", tenant_id=TENANT_B, override=override)
        )
        written = time.perf_counter()
        while True:
            every = await b_flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_B))
            if every.evaluations["search.fast"].enabled:
                break
            assert time.perf_counter() - written < 5, "flag change did not reach the replica"
            await asyncio.sleep(0.001)
        # Only the tenant the change names sees it.
        other = await b_flags.EvaluateFlags(fpb.EvaluateFlagsRequest(tenant_id=TENANT_A))
        assert other.evaluations["search.fast"].reason == fpb.EVALUATION_REASON_DEFAULT
    p50 = statistics.median(latencies)
    print(f"replica convergence: p50 {p50 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    # The sequencer runs every 10 ms and NOTIFY wakes the tail: far below one poll period.
    assert p50 < 0.25


async def test_a_replica_started_later_loads_everything_and_follows(
    app: App, db_url: str, settings: Settings
):
    channel, configs, flags = await stubs(app)
    async with channel:
        await flags.CreateFlag(fpb.CreateFlagRequest(key="early.flag", default_enabled=True))
        await set_pwd(configs, TENANT_A, 99)
        late = App(replace(settings), db_url, authorizer=AllowAll())
        await late.start()
        try:
            assert late.read_model.loaded.is_set()  # before the port answered
            late_channel, late_configs, late_flags = await stubs(late)
            async with late_channel:
                assert await resolve_pwd(late_configs, TENANT_A) == 99
                one = await late_flags.EvaluateFlag(
                    fpb.EvaluateFlagRequest(key="early.flag", tenant_id=TENANT_B)
                )
                assert one.enabled
                await set_pwd(configs, TENANT_A, 98)
                deadline = time.monotonic() + 5
                while await resolve_pwd(late_configs, TENANT_A) != 98:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.005)
        finally:
            await late.stop(grace=0)


def test_stale_versions_never_replace_newer_state():
    """The guard every apply goes through: replays and overlaps converge on the newest."""
    from domain.read_state import ConfigState, FlagState, ReadState

    state = ReadState()
    newer = FlagState("f", True, (TENANT_A,), (), False, 3)
    older = FlagState("f", False, (), (TENANT_A,), False, 2)
    state.apply_flag(newer)
    assert not state.apply_flag(older).everyone
    assert state.flags["f"] is newer
    assert [f.key for f in state.tenant_overrides(TENANT_A)] == ["f"]
    from domain.config_keys import ALLOW_LIST, Scope

    spec = ALLOW_LIST[PWD]
    state.apply_config(ConfigState(PWD, Scope.TENANT, TENANT_A, None, 20, False, 5))
    state.apply_config(ConfigState(PWD, Scope.TENANT, TENANT_A, None, 10, False, 4))
    assert state.resolve(spec, TENANT_A, None) == (20, Scope.TENANT)
    state.apply_config(ConfigState(PWD, Scope.TENANT, TENANT_A, None, 20, True, 6))
    assert state.resolve(spec, TENANT_A, None) == (12, None)  # archived, no PLATFORM row here


def test_successful_hot_reads_stay_out_of_the_access_log(caplog):
    """A line per Evaluate/Resolve call would cost as much as the call; failures still log."""
    import logging

    from server.rpc.access_log import AccessLog
    from server.rpc.observers import FinishedCall

    caplog.set_level(logging.INFO, logger="platform_admin.access")
    observer = AccessLog()
    for method in (
        "/platform_admin.v1.FlagService/EvaluateFlag",
        "/platform_admin.v1.ConfigService/ResolveConfigs",
    ):
        observer.on_call_done(FinishedCall(method, grpc.StatusCode.OK, 0.0001, None, ()))
    assert not caplog.records
    observer.on_call_done(
        FinishedCall(
            "/platform_admin.v1.FlagService/EvaluateFlag",
            grpc.StatusCode.NOT_FOUND,
            0.0001,
            None,
            (),
        )
    )
    observer.on_call_done(
        FinishedCall(
            "/platform_admin.v1.ConfigService/SetConfig", grpc.StatusCode.OK, 0.002, None, ()
        )
    )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "EvaluateFlag status=NOT_FOUND" in lines[0]
    assert "SetConfig status=OK" in lines[1]


async def test_events_lost_to_the_tail_make_the_model_reload(app: App, sql):
    """If retention pruned events before this process read them, a snapshot replaces guesses."""
    await asyncio.wait_for(app.read_model.attached.wait(), 10)
    channel, configs, _ = await stubs(app)
    async with channel:
        await set_pwd(configs, TENANT_A, 40)
        # A change the stream never carries (as if its event had been pruned unread).
        sql.execute(
            "UPDATE platform_configs SET value = '41', version = version + 1"
            " WHERE key = %s AND tenant_id = %s",
            (PWD, TENANT_A),
        )
        await asyncio.sleep(0.3)
        assert await resolve_pwd(configs, TENANT_A) == 40
        await app.tail._skip_to_head()  # what the tail does when its position was pruned
        deadline = time.monotonic() + 5
        while await resolve_pwd(configs, TENANT_A) != 41:
            assert time.monotonic() < deadline, "the model did not reload"
            await asyncio.sleep(0.02)
        # And it keeps following the stream afterwards.
        await set_pwd(configs, TENANT_A, 42)
        assert await resolve_pwd(configs, TENANT_A) == 42


async def test_a_change_whose_event_does_not_decode_makes_the_model_reload(app: App, sql):
    """The row changed and its outbox event is unreadable (a bad payload): the stream skips
    it, and the model, which would otherwise answer wrong until a restart, reloads."""
    await asyncio.wait_for(app.read_model.attached.wait(), 10)
    channel, configs, _ = await stubs(app)
    async with channel:
        await set_pwd(configs, TENANT_A, 40)
        with sql.transaction():
            sql.execute(
                "UPDATE platform_configs SET value = '43', version = version + 1"
                " WHERE key = %s AND tenant_id = %s",
                (PWD, TENANT_A),
            )
            sql.execute(
                "INSERT INTO outbox (id, tenant_id, subject, payload, headers)"
                " VALUES (%s, %s, %s, %s, '{}')",
                (new_ulid(), TENANT_A, events.CONFIG_CHANGED, '{"key": 7}'),
            )
        deadline = time.monotonic() + 5
        while await resolve_pwd(configs, TENANT_A) != 43:
            assert time.monotonic() < deadline, "the model did not reload"
            await asyncio.sleep(0.02)
        await set_pwd(configs, TENANT_A, 44)  # and it follows the stream afterwards
        assert await resolve_pwd(configs, TENANT_A) == 44


async def test_an_event_that_fails_to_apply_makes_the_model_reload(app: App, monkeypatch):
    """Applying raised (a bug, or state the code did not expect): the event is not silently
    lost behind the model's position; a snapshot is loaded and the model follows again."""
    await asyncio.wait_for(app.read_model.attached.wait(), 10)
    channel, configs, _ = await stubs(app)
    async with channel:
        await set_pwd(configs, TENANT_A, 40)
        state = app.read_model.state
        original = type(state).apply_config
        failures = []

        def failing_once(self: Any, config: Any) -> Any:
            if self is state and not failures and config.key == PWD and config.value == 45:
                failures.append(config)
                raise RuntimeError("unexpected state")
            return original(self, config)

        monkeypatch.setattr(type(state), "apply_config", failing_once)
        other = App(replace(app.settings), app.conninfo, authorizer=AllowAll())
        await other.start()  # a write through another process reaches this one as an event
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as elsewhere:
                await set_pwd(config_pb2_grpc.ConfigServiceStub(elsewhere), TENANT_A, 45)
        finally:
            await other.stop(grace=0)
        deadline = time.monotonic() + 5
        while await resolve_pwd(configs, TENANT_A) != 45:
            assert time.monotonic() < deadline, "the model did not reload"
            await asyncio.sleep(0.02)
        assert failures, "the failure was not injected"
        await set_pwd(configs, TENANT_A, 46)
        assert await resolve_pwd(configs, TENANT_A) == 46
