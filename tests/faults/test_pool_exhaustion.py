"""Fault 4: 500 concurrent calls against a pool of 5 connections.

Every call completes or fails with RESOURCE_EXHAUSTED / UNAVAILABLE inside its deadline
(the server answers first, so the client never sees DEADLINE_EXCEEDED); none hangs; and
the pool is whole afterwards.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import psycopg
import pytest
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

from server.app import App
from tests.conftest import TEST_SETTINGS
from tests.faults.support import PWD, Recorder, audit_writes, set_tenant, tenants

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

CALLS = 500
DEADLINE_S = 3.0
ALLOWED = {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
# Pool waits default to 5 s, longer than the calls' deadline: the server must cut them.
POOL = replace(TEST_SETTINGS, pool_min=5, pool_max=5, pool_acquire_timeout_s=5.0)


def set_platform(stub: config_pb2_grpc.ConfigServiceStub, value: int) -> object:
    return stub.SetConfig(
        pb.SetConfigRequest(
            key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM, value=pb.ConfigValue(int_value=value)
        ),
        timeout=DEADLINE_S,
    )


async def burst(stub: config_pb2_grpc.ConfigServiceStub, rows: list[str], hot: bool) -> Recorder:
    """CALLS concurrent calls: writes (to a locked row when ``hot``) and reads, mixed."""
    recorder = Recorder()

    def one(i: int) -> object:
        if i % 3 == 0:
            return recorder.call(
                "read",
                stub.ListConfigHistory(
                    pb.ListConfigHistoryRequest(
                        key=PWD, scope=pb.CONFIG_SCOPE_TENANT, tenant_id=rows[i % len(rows)]
                    ),
                    timeout=DEADLINE_S,
                ),
                DEADLINE_S,
            )
        if hot:
            return recorder.call("write", set_platform(stub, 8 + i % 100), DEADLINE_S)
        tenant, value = rows[i % len(rows)], 8 + i % 120  # distinct per row
        return recorder.call(
            "write", set_tenant(stub, tenant, value, DEADLINE_S), DEADLINE_S, tenant, value
        )

    # "None hangs": the whole burst is bounded well below the test timeout.
    async with asyncio.timeout(DEADLINE_S * 4):
        await asyncio.gather(*(one(i) for i in range(CALLS)))
    return recorder


def check(recorder: Recorder) -> None:
    codes = recorder.codes()
    assert sum(codes.values()) == CALLS
    assert set(codes) <= ALLOWED, codes
    slowest = max(o.seconds for o in recorder.outcomes)
    assert slowest < DEADLINE_S, slowest


async def pool_is_whole(app: App) -> None:
    for _ in range(100):
        stats = app.db.pool.get_stats()
        if stats["pool_available"] == stats["pool_size"] and stats.get("requests_waiting", 0) == 0:
            break
        await asyncio.sleep(0.05)
    stats = app.db.pool.get_stats()
    assert stats["pool_size"] <= 5
    assert stats["pool_available"] == stats["pool_size"], stats


async def test_500_calls_on_5_connections_finish_or_fail_inside_their_deadline(db_url):
    app = App(POOL, db_url)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            rows = tenants(50)
            recorder = await burst(stub, rows, hot=False)
            check(recorder)
            print(f"free-flowing burst: {dict(recorder.codes())}")
            assert recorder.codes()["OK"] > CALLS // 2
            audit_writes(db_url, recorder.acked())
            await pool_is_whole(app)
    finally:
        await app.stop(grace=0)


async def test_connections_stuck_behind_a_lock_give_unavailable_not_a_hang(db_url):
    """Five calls hold every connection waiting on a row lock; the other 495 queue for them."""
    app = App(replace(POOL, lock_timeout_ms=60_000, statement_timeout_ms=60_000), db_url)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
                locker.execute(
                    "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM'"
                    " FOR UPDATE",
                    (PWD,),
                )
                started = time.monotonic()
                recorder = await burst(stub, tenants(50), hot=True)
                took = time.monotonic() - started
                locker.rollback()
            check(recorder)
            codes = recorder.codes()
            print(f"burst behind a lock: {dict(codes)} in {took:.2f}s")
            assert codes["UNAVAILABLE"] > 0
            assert took < DEADLINE_S + 1
            await pool_is_whole(app)
            # Service resumes at once: the lock is gone and the pool is whole.
            answer = await set_platform(stub, 99)
            assert answer.config.value.int_value == 99
    finally:
        await app.stop(grace=0)


async def test_a_full_wait_queue_sheds_load_with_resource_exhausted(db_url):
    app = App(replace(POOL, pool_max_waiting=20, lock_timeout_ms=60_000), db_url)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
                locker.execute(
                    "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM'"
                    " FOR UPDATE",
                    (PWD,),
                )
                recorder = await burst(stub, tenants(50), hot=True)
                locker.rollback()
            check(recorder)
            codes = recorder.codes()
            print(f"burst with a 20-caller queue: {dict(codes)}")
            assert codes["RESOURCE_EXHAUSTED"] > CALLS // 2
            await pool_is_whole(app)
    finally:
        await app.stop(grace=0)
