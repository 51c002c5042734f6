"""Fault 1: PostgreSQL stopped and restarted under mixed load.

The cluster is the test's own (embedded PostgreSQL under tmp_path), never the machine's.
While it is down, every call ends with UNAVAILABLE well inside its deadline and health
says NOT_SERVING; when it returns, the same server process serves again without a restart,
and every acknowledged write is there with its history entry and outbox event.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

from server.app import App
from server.rpc.pipeline import AllowAll
from storage.migrate import migrate
from tests.conftest import TEST_SETTINGS
from tests.faults.support import (
    PWD,
    ConfigSubscriber,
    OwnCluster,
    Recorder,
    audit_writes,
    final_versions,
    set_tenant,
    tenants,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

DEADLINE_S = 3.0
SUBSCRIBERS = 5
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def cluster() -> Iterator[OwnCluster]:
    # Not tmp_path: pytest keeps its base directory private (0700), and the cluster runs as
    # its own system user when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix="platform-admin-faults-"))
    path.chmod(0o755)
    own = OwnCluster(path)
    try:
        yield own
    finally:
        own.close()
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stopped_and_restarted_under_mixed_load(
    cluster: OwnCluster, mode: str
) -> None:
    """``fast``: an orderly stop; ``immediate``: as in a crash (WAL replay on restart)."""
    await migrate(cluster.conninfo)
    settings = replace(TEST_SETTINGS, pool_min=2, pool_max=8, pool_acquire_timeout_s=2.0)
    app = App(settings, cluster.conninfo, health_interval_s=0.2, authorizer=AllowAll())
    await app.start()
    writers = tenants(6)
    recorder = Recorder()
    stop = asyncio.Event()
    health_log: list[tuple[float, int]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def write_loop(tenant: str) -> None:
                value = 8
                while not stop.is_set():
                    value = 8 + (value - 7) % 120  # always differs from the last one
                    await recorder.call(
                        "write",
                        set_tenant(stub, tenant, value, DEADLINE_S),
                        DEADLINE_S,
                        tenant,
                        value,
                    )
                    await asyncio.sleep(0.005)

            async def resolve_loop() -> None:
                # Its own loop: a GetConfig waiting on the pool during the outage must not
                # throttle the reads that are served from memory.
                while not stop.is_set():
                    await recorder.call(
                        "resolve",
                        stub.ResolveConfigs(
                            pb.ResolveConfigsRequest(tenant_id=writers[0]), timeout=DEADLINE_S
                        ),
                        DEADLINE_S,
                    )
                    await asyncio.sleep(0.005)

            async def read_loop() -> None:
                while not stop.is_set():
                    await recorder.call(
                        "read",
                        stub.GetConfig(
                            pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM),
                            timeout=DEADLINE_S,
                        ),
                        DEADLINE_S,
                    )
                    await asyncio.sleep(0.005)

            async def health_loop() -> None:
                while not stop.is_set():
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    health_log.append((time.monotonic(), answer.status))
                    await asyncio.sleep(0.05)

            async def status_is(status: int, timeout: float) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if health_log and health_log[-1][1] == status:
                        return True
                    await asyncio.sleep(0.05)
                return False

            subscribers = [ConfigSubscriber(stub) for _ in range(SUBSCRIBERS)]
            listening = [asyncio.create_task(sub.run()) for sub in subscribers]
            load = [asyncio.create_task(write_loop(t)) for t in writers]
            load += [asyncio.create_task(read_loop()) for _ in range(3)]
            load += [asyncio.create_task(resolve_loop()) for _ in range(3)]
            load.append(asyncio.create_task(health_loop()))
            await asyncio.sleep(1.5)
            assert await status_is(SERVING, 1)

            await asyncio.to_thread(cluster.stop, mode)
            stopped_at = time.monotonic()
            assert await status_is(NOT_SERVING, 5), "health did not turn NOT_SERVING"
            await asyncio.sleep(2.0)

            await asyncio.to_thread(cluster.start)
            started_at = time.monotonic()
            assert await status_is(SERVING, 20), "health did not return to SERVING"

            async def wrote_since_restart() -> bool:
                return any(o.started > started_at for o in recorder.acked())

            await wait_for(wrote_since_restart, 20)
            recovered_in = time.monotonic() - started_at
            assert await wrote_since_restart(), "writes did not recover without a restart"
            await asyncio.sleep(1.0)
            stop.set()
            async with asyncio.timeout(DEADLINE_S * 3):
                await asyncio.gather(*load)

            # Subscribers catch up with the database: every change, once, in order.
            final = final_versions(cluster.conninfo)

            async def caught_up() -> bool:
                return all(sub.latest(i) >= v for sub in subscribers for i, v in final.items())

            assert await wait_for(caught_up, 20), "subscribers did not catch up"
            for sub in subscribers:
                sub.stop()
            await asyncio.gather(*listening)
    finally:
        stop.set()
        await app.stop(grace=0)

    codes = recorder.codes()
    print(f"outcomes {dict(codes)}; writes recovered {recovered_in:.2f}s after restart")
    # Every call either succeeded or said UNAVAILABLE: no INTERNAL, no deadline expiry.
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    during = [
        o
        for o in recorder.outcomes
        if o.code == UNAVAILABLE and stopped_at <= o.started < started_at
    ]
    assert len(during) >= 10, "the outage was not exercised"
    # Hot reads come from the in-memory read model: they keep answering while PostgreSQL is down.
    resolves_during = [
        o for o in recorder.outcomes if o.kind == "resolve" and stopped_at <= o.started < started_at
    ]
    assert len(resolves_during) >= 10, "no ResolveConfigs during the outage"
    assert all(o.code == OK for o in resolves_during), Counter(o.code.name for o in resolves_during)
    # Fail fast: well inside the deadline, not after waiting it out.
    assert statistics.median(o.seconds for o in during) < 1.0, [o.seconds for o in during]
    assert max(o.seconds for o in during) < DEADLINE_S
    assert any(o.code == OK and o.started < stopped_at for o in recorder.outcomes)
    audit_writes(cluster.conninfo, recorder.acked())
    assert len(final) == len(writers)
    for sub in subscribers:
        assert set(sub.errors) <= {"UNAVAILABLE"}, sub.errors
        for identity, version in final.items():
            sub.check_complete(identity, version)
    print(f"subscribers reconnected {[s.connects - 1 for s in subscribers]} times")
