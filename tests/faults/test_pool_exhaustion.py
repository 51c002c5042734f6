"""Fault 4: 500 concurrent calls against a pool of 5 connections.

Every call completes or fails with RESOURCE_EXHAUSTED / UNAVAILABLE inside its deadline
(the server answers first, so the client never sees DEADLINE_EXCEEDED); none hangs; and
the pool is whole afterwards. The server is a real ``platform-admin serve`` process whose
pool waits (10 s) are longer than the calls' deadline: it must cut them itself.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import psycopg
import pytest
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.support import PWD, Recorder, audit_writes, set_tenant, tenants
from tests.grpcurl_server import RunningServer, free_port, start_server, stop_server

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

CALLS = 500
DEADLINE_S = 4.0
ALLOWED = {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
POOL_OF_5 = {
    "PLATFORM_ADMIN_POOL_MIN": "5",
    "PLATFORM_ADMIN_POOL_MAX": "5",
    "PLATFORM_ADMIN_POOL_TIMEOUT_S": "10",
    "PLATFORM_ADMIN_LOCK_TIMEOUT_MS": "60000",
    "PLATFORM_ADMIN_STATEMENT_TIMEOUT_MS": "60000",
}


@contextmanager
def pool_of_5(db_url, tmp_path, **extra: str) -> Iterator[tuple[RunningServer, int]]:
    metrics_port = free_port()
    server = start_server(
        db_url,
        tmp_path,
        {**POOL_OF_5, "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", **extra},
    )
    try:
        yield server, metrics_port
    finally:
        assert stop_server(server) == 0


@contextmanager
def platform_row_locked(db_url: str) -> Iterator[None]:
    with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
        locker.execute(
            "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM' FOR UPDATE",
            (PWD,),
        )
        yield
        locker.rollback()


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


def pool_figures(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("platform_admin_db_pool_")
    }


async def pool_is_whole(metrics_port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        pool = await asyncio.to_thread(pool_figures, metrics_port)
        if (
            pool["platform_admin_db_pool_in_use"] == 0
            and pool["platform_admin_db_pool_waiting"] == 0
        ):
            break
        assert time.monotonic() < deadline, pool
        await asyncio.sleep(0.1)
    assert pool["platform_admin_db_pool_size"] <= 5


async def test_500_calls_on_5_connections_finish_or_fail_inside_their_deadline(db_url, tmp_path):
    with pool_of_5(db_url, tmp_path) as (server, metrics_port):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            recorder = await burst(stub, tenants(50), hot=False)
            check(recorder)
            print(f"free-flowing burst: {dict(recorder.codes())}")
            assert recorder.codes()["OK"] > CALLS // 2
            audit_writes(db_url, recorder.acked())
            await pool_is_whole(metrics_port)


async def test_connections_stuck_behind_a_lock_give_unavailable_not_a_hang(db_url, tmp_path):
    """Calls holding all five connections wait on a row lock; the others queue for them."""
    with pool_of_5(db_url, tmp_path) as (server, metrics_port):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            with platform_row_locked(db_url):
                started = time.monotonic()
                recorder = await burst(stub, tenants(50), hot=True)
                took = time.monotonic() - started
            check(recorder)
            codes = recorder.codes()
            print(f"burst behind a lock: {dict(codes)} in {took:.2f}s")
            assert codes["UNAVAILABLE"] > CALLS // 2
            await pool_is_whole(metrics_port)
            # Service resumes at once: the lock is gone and the pool is whole.
            answer = await set_platform(stub, 99)
            assert answer.config.value.int_value == 99


async def test_a_full_wait_queue_sheds_load_with_resource_exhausted(db_url, tmp_path):
    extra = {"PLATFORM_ADMIN_POOL_MAX_WAITING": "20"}
    with pool_of_5(db_url, tmp_path, **extra) as (server, metrics_port):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            with platform_row_locked(db_url):
                recorder = await burst(stub, tenants(50), hot=True)
            check(recorder)
            codes = recorder.codes()
            print(f"burst with a 20-caller queue: {dict(codes)}")
            assert codes["RESOURCE_EXHAUSTED"] > CALLS // 2
            await pool_is_whole(metrics_port)
