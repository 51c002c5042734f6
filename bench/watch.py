"""`make bench-watch`: WatchFlags commit-to-delivery latency with 1,000 subscribers.

What it does (about a minute):

1. Uses its own database, on DATABASE_URL's server or on an embedded PostgreSQL under
   ``.data/pg-bench``, migrated and seeded with a few flags.
2. One replica: starts ``platform-admin serve``, opens 1,000 WatchFlags streams on it (10
   HTTP/2 connections of 100 streams, as many clients would), waits for every snapshot,
   then changes one flag every ``BENCH_WATCH_INTERVAL_MS`` through UpdateFlag. Latency of a
   delivery = time the stream received the change - time UpdateFlag returned (the commit
   was acknowledged). Clocks: one machine, CLOCK_MONOTONIC.
3. Two replicas: two server processes on the same database, 500 streams on each; every
   change is written through replica A, so the streams on B measure the cross-replica
   path (B learns of the change by NOTIFY from A's sequencer, or by its poll).

The subscribers and the writer run in this process, so the figures include the client's
own cost of receiving 1,000 messages per change on a machine shared with the servers.
Environment: BENCH_WATCH_CHANGES (default 40), BENCH_WATCH_INTERVAL_MS (default 150),
BENCH_WATCH_SUBSCRIBERS (default 1000), DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from google.protobuf import field_mask_pb2
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from bench.harness import Proc, bench_server_url, own_database, say, start_service

CHANGES = int(os.environ.get("BENCH_WATCH_CHANGES", "40"))
INTERVAL_S = int(os.environ.get("BENCH_WATCH_INTERVAL_MS", "150")) / 1000
SUBSCRIBERS = int(os.environ.get("BENCH_WATCH_SUBSCRIBERS", "1000"))
STREAMS_PER_CONNECTION = 100
N_FLAGS = 20


@dataclass
class Subscriber:
    replica: str
    received: dict[int, float] = field(default_factory=dict)  # version -> monotonic time
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


@dataclass
class Row:
    scenario: str
    subscribers: int
    samples: int
    missing: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def seed(url: str) -> None:
    with psycopg.connect(url, options="-c search_path=platform_admin") as conn:
        for i in range(N_FLAGS):
            conn.execute(
                "INSERT INTO feature_flags (key, description) VALUES (%s, %s)",
                (f"bench.flag-{i}", f"bench flag {i}"),
            )
        conn.commit()


async def _subscribe(stub: flag_pb2_grpc.FlagServiceStub, sub: Subscriber, key: str) -> None:
    call = stub.WatchFlags(flag_pb2.WatchFlagsRequest(keys=[key]))
    try:
        async for message in call:
            what = message.WhichOneof("event")
            if what == "flag_changed":
                sub.received[int(message.flag_changed.etag)] = time.monotonic()
            elif what == "snapshot_end":
                sub.ready.set()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            sub.error = f"{exc.code().name}: {exc.details()}"
    finally:
        sub.ready.set()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def run_scenario(
    ports: dict[str, int], writer_port: int, server_pids: list[int]
) -> dict[str, list[float]]:
    """Opens the streams spread over ``ports``, writes, returns latencies (ms) per replica."""
    key = "bench.flag-0"
    channels: list[grpc.aio.Channel] = []
    subscribers: list[Subscriber] = []
    tasks: list[asyncio.Task[None]] = []
    names = list(ports)
    try:
        for i in range(SUBSCRIBERS):
            subscribers.append(Subscriber(names[i % len(names)]))
        # Connections: STREAMS_PER_CONNECTION streams each, per replica.
        stubs: dict[str, list[flag_pb2_grpc.FlagServiceStub]] = {}
        for name, port in ports.items():
            count = sum(1 for s in subscribers if s.replica == name)
            stubs[name] = []
            for _ in range(-(-count // STREAMS_PER_CONNECTION)):
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                channels.append(channel)
                stubs[name].append(flag_pb2_grpc.FlagServiceStub(channel))
        seen: dict[str, int] = dict.fromkeys(ports, 0)
        for sub in subscribers:
            stub = stubs[sub.replica][seen[sub.replica] // STREAMS_PER_CONNECTION]
            seen[sub.replica] += 1
            tasks.append(asyncio.create_task(_subscribe(stub, sub, key)))
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subscribers)), 120)
        failed = [s.error for s in subscribers if s.error]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0]}")
        say(f"  {len(subscribers)} streams open in {time.monotonic() - started:.1f}s")

        committed: dict[int, float] = {}
        cpu_before, own_before = cpu_seconds(server_pids), time.process_time()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{writer_port}") as channel:
            writer = flag_pb2_grpc.FlagServiceStub(channel)
            await asyncio.sleep(0.5)
            for i in range(CHANGES):
                reply = await writer.UpdateFlag(
                    flag_pb2.UpdateFlagRequest(
                        key=key,
                        description=f"change {i}",
                        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                    )
                )
                committed[int(reply.flag.etag)] = time.monotonic()
                await asyncio.sleep(INTERVAL_S)
        for _ in range(300):  # at most 30 s for the last deliveries
            if all(len(s.received) >= len(committed) for s in subscribers):
                break
            await asyncio.sleep(0.1)
        server_ms = (cpu_seconds(server_pids) - cpu_before) / CHANGES * 1000
        own_ms = (time.process_time() - own_before) / CHANGES * 1000
        say(f"  CPU per change: servers {server_ms:.1f} ms, subscribers+writer {own_ms:.1f} ms")
        latencies: dict[str, list[float]] = {name: [] for name in ports}
        missing: dict[str, int] = dict.fromkeys(ports, 0)
        for sub in subscribers:
            for version, at in committed.items():
                got = sub.received.get(version)
                if got is None:
                    missing[sub.replica] += 1
                else:
                    latencies[sub.replica].append((got - at) * 1000)
        for name, count in missing.items():
            if count:
                latencies[name].append(float("nan"))
                say(f"  {count} deliveries missing on {name}")
        return latencies
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


def _row(scenario: str, subscribers: int, values: list[float]) -> Row:
    missing = sum(1 for v in values if v != v)
    clean = [v for v in values if v == v]
    return Row(
        scenario,
        subscribers,
        len(clean),
        missing,
        statistics.median(clean),
        _percentile(clean, 0.99),
        max(clean),
    )


def fmt_table(rows: list[Row]) -> str:
    header = "| scenario | subscribers | deliveries | missing | p50 ms | p99 ms | max ms |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.subscribers:,} | {r.samples:,} | {r.missing} |"
            f" {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def services(url: str, workdir: Path, count: int) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(count):
            procs.append(start_service(url, workdir))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def main() -> int:
    say(
        f"bench-watch: {SUBSCRIBERS} subscribers, {CHANGES} changes every"
        f" {INTERVAL_S * 1000:.0f} ms"
    )
    rows: list[Row] = []
    with (
        bench_server_url() as server_url,
        own_database(server_url, "pa_bench_watch") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        seed(url)
        workdir = Path(tmp)
        say("one replica")
        with services(url, workdir, 1) as (a,):
            one = asyncio.run(run_scenario({"A": a.port}, a.port, [a.process.pid]))
        rows.append(_row("one replica", SUBSCRIBERS, one["A"]))
        say("two replicas, writes through A")
        with services(url, workdir, 2) as (a, b):
            two = asyncio.run(
                run_scenario({"A": a.port, "B": b.port}, a.port, [a.process.pid, b.process.pid])
            )
        rows.append(_row("two replicas: all", SUBSCRIBERS, two["A"] + two["B"]))
        half = SUBSCRIBERS // 2
        rows.append(_row("two replicas: on A (writes through A)", half, two["A"]))
        rows.append(_row("two replicas: on B (the other replica)", half, two["B"]))
    print(fmt_table(rows))
    return 0 if all(r.missing == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
