"""Fault 3: SIGTERM with 100 in-flight calls and 50 open watch streams.

Replica A gets SIGTERM while 100 SetConfig calls are in flight (held by a row lock) and 50
WatchFlags streams are open under a steady flow of flag changes. A must end every stream
with UNAVAILABLE, refuse new calls, finish all 100 unary calls within its grace period and
exit 0. Each stream then resumes on replica B from its last cursor and receives every
change after it: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.support import PWD, Recorder
from tests.grpcurl_server import free_port, start_server, stop_server
from tests.helpers import expect_error
from tests.watch_helpers import Watcher, commit_flag, watch

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

CALLS = 100
STREAMS = 50
KEYS = [f"faults.sigterm.{i}" for i in range(5)]
GRACE_S = 20
SET = "platform_admin.v1.ConfigService/SetConfig"


def in_flight(metrics_port: int, method: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "platform_admin_rpcs_in_flight":
            for sample in family.samples:
                if sample.labels.get("method") == method:
                    return sample.value
    return 0.0


def received(w: Watcher) -> list[tuple[str, int]]:
    return [(m.key, m.version) for m in w.messages if m.kind == "flag_changed"]


async def test_sigterm_drains_unary_calls_and_streams_resume_on_another_replica(db_url, tmp_path):
    metrics_port = free_port()
    a = start_server(
        db_url,
        tmp_path,
        {
            "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "PLATFORM_ADMIN_SHUTDOWN_GRACE_S": str(GRACE_S),
            "PLATFORM_ADMIN_POOL_MAX": "20",
            "PLATFORM_ADMIN_POOL_TIMEOUT_S": "60",
            "PLATFORM_ADMIN_LOCK_TIMEOUT_MS": "60000",
            "PLATFORM_ADMIN_STATEMENT_TIMEOUT_MS": "60000",
        },
    )
    b = start_server(db_url, tmp_path)
    committed: dict[str, list[int]] = {k: [] for k in KEYS}
    for key in KEYS:
        committed[key].append(await commit_flag(db_url, key))
    # These first writes bypass the servers (plain SQL), so no commit wakes a sequencer:
    # let them be sequenced before the snapshots are taken, or a snapshot could show a
    # version whose event comes after its cursor (re-sent after the resume).
    with psycopg.connect(db_url, options="-c search_path=platform_admin") as conn:
        for _ in range(100):
            if not conn.execute("SELECT count(*) FROM outbox WHERE seq IS NULL").fetchone()[0]:
                break
            await asyncio.sleep(0.05)
    writing = asyncio.Event()
    writing.set()

    async def write_flags() -> None:
        i = 0
        while writing.is_set():
            key = KEYS[i % len(KEYS)]
            committed[key].append(await commit_flag(db_url, key, f"change {i}"))
            i += 1
            await asyncio.sleep(0.01)

    recorder = Recorder()
    try:
        async with (
            grpc.aio.insecure_channel(a.address) as to_a,
            grpc.aio.insecure_channel(b.address) as to_b,
        ):
            # An operator's view of A's health, as a load balancer watching it.
            health_watch = health_pb2_grpc.HealthStub(to_a).Watch(health_pb2.HealthCheckRequest())
            first = await health_watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            streams = [watch(to_a, keys=KEYS) for _ in range(STREAMS)]
            for w in streams:
                await w.until(lambda w: w.snapshot_done())
            writer = asyncio.create_task(write_flags())

            stub = config_pb2_grpc.ConfigServiceStub(to_a)
            with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
                locker.execute(
                    "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM'"
                    " FOR UPDATE",
                    (PWD,),
                )
                calls = [
                    asyncio.create_task(
                        recorder.call(
                            "write",
                            stub.SetConfig(
                                pb.SetConfigRequest(
                                    key=PWD,
                                    scope=pb.CONFIG_SCOPE_PLATFORM,
                                    value=pb.ConfigValue(int_value=8 + i),
                                ),
                                timeout=GRACE_S + 30,
                            ),
                            GRACE_S + 30,
                        )
                    )
                    for i in range(CALLS)
                ]
                deadline = time.monotonic() + 20
                while await asyncio.to_thread(in_flight, metrics_port, SET) < CALLS:
                    assert time.monotonic() < deadline, "the calls never were all in flight"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)  # changes flow to the streams meanwhile

                a.process.send_signal(signal.SIGTERM)
                sigterm_at = time.monotonic()
                # Health turns NOT_SERVING first, so balancers stop sending calls to A.
                turned = await asyncio.wait_for(health_watch.read(), 5)
                assert turned.status == health_pb2.HealthCheckResponse.NOT_SERVING
                health_watch.cancel()
                # Every stream ends with UNAVAILABLE, while the unary calls still wait.
                for w in streams:
                    await asyncio.wait_for(asyncio.shield(w.task), 10)
                assert all(w.error is not None for w in streams)
                assert {w.error.code() for w in streams} == {grpc.StatusCode.UNAVAILABLE}
                assert not any(c.done() for c in calls)
                # A no longer takes new calls.
                async with grpc.aio.insecure_channel(a.address) as fresh:
                    await expect_error(
                        config_pb2_grpc.ConfigServiceStub(fresh).ListConfigKeys(
                            pb.ListConfigKeysRequest(), timeout=5
                        ),
                        grpc.StatusCode.UNAVAILABLE,
                    )
                locker.rollback()  # the in-flight calls may now finish

            await asyncio.wait_for(asyncio.gather(*calls), GRACE_S)
            assert recorder.codes() == {"OK": CALLS}, recorder.codes()
            exit_code = await asyncio.to_thread(a.process.wait, GRACE_S + 10)
            assert exit_code == 0
            drained_in = time.monotonic() - sigterm_at

            # Resume every stream on B from its last cursor, then let the writer stop.
            resumed = [watch(to_b, cursor=w.last_cursor(), keys=KEYS) for w in streams]
            await asyncio.sleep(0.5)
            writing.clear()
            await writer
            final = {k: v[-1] for k, v in committed.items()}

            for before, after in zip(streams, resumed, strict=True):
                await after.until(lambda w, before=before: caught_up_pair(before, w, final))
            for after in resumed:
                await after.stop()
    finally:
        writing.clear()
        stop_server(a)
        stop_server(b)

    # Nothing lost, nothing twice: per key, the versions after the snapshot arrive once each.
    for before, after in zip(streams, resumed, strict=True):
        snapshot = before.snapshot()
        got = received(before) + received(after)
        assert len(got) == len(set(got)), "a change arrived twice"
        for key in KEYS:
            versions = [v for k, v in got if k == key]
            expected = [v for v in committed[key] if v > snapshot[key]]
            assert versions == expected, (key, versions, expected)
    print(
        f"{CALLS} in-flight calls completed, {STREAMS} streams resumed on B;"
        f" A drained in {drained_in:.2f}s"
    )


def caught_up_pair(before: Watcher, after: Watcher, final: dict[str, int]) -> bool:
    got = dict(received(before) + received(after))
    return all(got.get(k, 0) >= v for k, v in final.items())
