"""Memory an authenticated, low-privileged caller can make a server hold, measured.

A real ``platform-admin serve`` process (authentication on), its resident memory read from
/proc/PID/status (VmRSS) before and after each attack:

* 300 EvaluateFlags calls, each with 1,000 distinct unknown 100-character keys, over 300
  tenants (a ``service`` token): the server's RSS rises by less than 50 MB;
* 2,000 WatchFlags streams on 1,000 flags that never read (four ``service`` principals,
  four connections): RSS rises by less than 200 MB, and EvaluateFlag keeps answering.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import flag_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from domain.ids import new_ulid
from tests.auth_helpers import ADMIN, SECRET, Caller, as_caller
from tests.grpcurl_server import RunningServer, free_port, start_server, stop_server

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

MB = 1024 * 1024
FLAGS = 1000
STREAMS = 2000
PRINCIPALS = 4
TENANTS_PER_FLAG = 10
# On a loaded 2-core machine a server admits a few dozen new streams a second; the streams
# must all be open (and their snapshots not yet past the deadline) when memory is read.
OPEN_WITHIN_S = 120


def rss(server: RunningServer) -> int:
    """The server process's resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def services(count: int) -> list[Caller]:
    return [
        Caller(f"svc{i}", f"01JAD00000000000000000SV{i:02d}", ("service",), service_id=f"svc-{i}")
        for i in range(count)
    ]


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[RunningServer, int]]:
    with psycopg.connect(db_url, autocommit=True, options="-c search_path=platform_admin") as sql:
        tenants = [new_ulid() for _ in range(TENANTS_PER_FLAG)]
        sql.execute(
            "INSERT INTO feature_flags (key, description, enabled_tenant_ids)"
            " SELECT 'load.flag-' || lpad(i::text, 4, '0'), 'a flag of the memory attacks', %s"
            "   FROM generate_series(1, %s) AS i",
            (tenants, FLAGS),
        )
    metrics_port = free_port()
    running = start_server(
        db_url,
        tmp_path,
        env={
            "PLATFORM_ADMIN_JWT_SECRET": SECRET,
            "PLATFORM_ADMIN_PROBE_ENABLED": "false",
            "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "PLATFORM_ADMIN_ACCESS_LOG": "false",
            "PLATFORM_ADMIN_WATCH_SNAPSHOT_DEADLINE_S": str(OPEN_WITHIN_S + 120),
        },
    )
    try:
        yield running, metrics_port
    finally:
        stop_server(running)


def open_streams(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "platform_admin_watch_subscribers":
            return sum(s.value for s in family.samples if s.labels.get("stream") == "flags")
    return 0.0


async def _settle() -> None:
    await asyncio.sleep(1.0)


async def test_made_up_keys_over_many_tenants_pin_no_memory(server):
    running, _ = server
    caller = services(1)[0]
    metadata = as_caller(caller)
    async with grpc.aio.insecure_channel(running.address) as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)

        async def attack(call_no: int) -> None:
            keys = [f"u{call_no:03d}.{i:04d}".ljust(100, "z") for i in range(1000)]
            answer = await flags.EvaluateFlags(
                fpb.EvaluateFlagsRequest(tenant_id=new_ulid(), keys=keys),
                metadata=metadata,
                timeout=30,
            )
            assert len(answer.missing_keys) == 1000

        for warm in range(20):  # allocator and gRPC buffers warm up first
            await attack(1000 + warm)
        await _settle()
        before = rss(running)
        for start in range(0, 300, 10):
            await asyncio.gather(*(attack(n) for n in range(start, start + 10)))
        await _settle()
        after = rss(running)
    grown = (after - before) / MB
    print(
        f"\nEvaluateFlags 300 x 1,000 unknown keys, 300 tenants: RSS {before / MB:.1f} ->"
        f" {after / MB:.1f} MB (+{grown:.1f} MB)"
    )
    assert grown < 50, f"RSS grew {grown:.1f} MB"


async def test_streams_that_never_read_pin_bounded_memory(server):
    running, metrics_port = server
    callers = services(PRINCIPALS)
    # Eight connections (channels to one target share a connection by default, and one
    # carries at most 1,024 streams), with small fixed HTTP/2 windows: the server's writes
    # block after 16 KB per stream, so each stream holds its snapshot page in the server.
    windows = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 16384),
    ]
    channels = [grpc.aio.insecure_channel(running.address, options=windows) for _ in range(8)]
    calls: list[Any] = []
    try:
        stubs = [flag_pb2_grpc.FlagServiceStub(c) for c in channels]
        # Warm-up: a few streams read their whole snapshot and go.
        for stub in stubs:
            call = stub.WatchFlags(fpb.WatchFlagsRequest(), metadata=as_caller(callers[0]))
            async for message in call:
                if message.WhichOneof("event") == "snapshot_end":
                    assert message.snapshot_end.count == FLAGS
                    break
            call.cancel()
        await _settle()
        before = rss(running)
        per = STREAMS // len(channels)
        opening = time.monotonic()
        # 50 new streams a second: a pace the server's pool serves without queueing for long.
        for n, stub in enumerate(stubs):
            metadata = as_caller(callers[n % PRINCIPALS])
            for _ in range(0, per, 50):
                calls += [
                    stub.WatchFlags(fpb.WatchFlagsRequest(), metadata=metadata) for _ in range(50)
                ]
                await asyncio.sleep(1.0)  # never read
        for _ in range(OPEN_WITHIN_S * 2):
            assert running.process.poll() is None, f"server exited: {running.log()[-2000:]}"
            if open_streams(metrics_port) >= STREAMS:
                break
            await asyncio.sleep(0.5)
        held = open_streams(metrics_port)
        print(f"\n{held:.0f} streams open after {time.monotonic() - opening:.1f} s")
        assert held == STREAMS, f"only {held} of {STREAMS} streams open"
        assert not any(c.done() for c in calls), "a stream was ended"
        await asyncio.sleep(3.0)  # every stream has written what flow control let through
        during = rss(running)
        # EvaluateFlag keeps answering while the streams are held.
        admin = as_caller(ADMIN)
        async with grpc.aio.insecure_channel(running.address) as fresh:
            evaluate = flag_pb2_grpc.FlagServiceStub(fresh)
            slowest = 0.0
            for n in range(50):
                started = time.perf_counter()
                answer = await evaluate.EvaluateFlag(
                    fpb.EvaluateFlagRequest(key=f"load.flag-{n + 1:04d}", tenant_id=new_ulid()),
                    metadata=admin,
                    timeout=5,
                )
                slowest = max(slowest, time.perf_counter() - started)
                assert answer.reason == fpb.EVALUATION_REASON_DEFAULT
        assert open_streams(metrics_port) == STREAMS
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    grown = (during - before) / MB
    print(
        f"\nWatchFlags {STREAMS} streams that never read, {FLAGS} flags: RSS"
        f" {before / MB:.1f} -> {during / MB:.1f} MB (+{grown:.1f} MB);"
        f" slowest EvaluateFlag meanwhile {slowest * 1000:.1f} ms"
    )
    assert grown < 200, f"RSS grew {grown:.1f} MB"
    assert slowest < 2.0
