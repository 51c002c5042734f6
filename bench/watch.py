"""`make bench-watch`: WatchFlags fan-out, from 1,000 to 10,000 subscribers per process.

What it does (a few minutes):

1. Uses its own database, on DATABASE_URL's server or on an embedded PostgreSQL under
   ``.data/pg-bench``, migrated and seeded with a few flags.
2. Baseline: the same 1,000 streams on bench/empty_server.py, whose UpdateFlag sends one
   pre-encoded message to every open WatchFlags stream: what a grpc.aio server costs per
   delivery before any of our code runs. Its CPU per delivery is the ratio's denominator.
3. One replica: starts ``platform-admin serve``, opens 1,000 WatchFlags streams on it (10
   HTTP/2 connections of 100 streams, as many clients would), waits for every snapshot,
   then changes one flag every ``BENCH_WATCH_INTERVAL_MS`` through UpdateFlag. Latency of a
   delivery = time the stream received the change - time UpdateFlag returned (the commit
   was acknowledged). Clocks: one machine, CLOCK_MONOTONIC.
4. Two replicas: two server processes on the same database, 500 streams on each; every
   change is written through replica A, so the streams on B measure the cross-replica
   path (B learns of the change by NOTIFY from A's sequencer, or by its poll).
5. Scale: ``BENCH_WATCH_SCALE_SUBSCRIBERS`` (10,000) streams over 100 connections on the
   empty fan-out, on one process, then on one ``serve`` with 2 workers: a latency run of
   ``BENCH_WATCH_SCALE_CHANGES`` (20) changes, one every ``BENCH_WATCH_SCALE_INTERVAL_MS``
   (1000), the resident memory each stream adds, and EvaluateFlag throughput
   (bench/loadgen.py, c=64) while a change goes to every stream each
   ``BENCH_WATCH_LOAD_INTERVAL_MS`` (100), against the same server's figure before any
   stream was open. That rate asks for 100,000 deliveries a second, more than one core
   can send even on the empty fan-out: the table says how long the backlog took to drain
   after the last change (every delivery must still arrive, in order).

The subscribers and the writer run in this process, so the figures include the client's
own cost of receiving every message on a machine shared with the servers.
Environment: BENCH_WATCH_CHANGES (default 40), BENCH_WATCH_INTERVAL_MS (default 150),
BENCH_WATCH_SUBSCRIBERS (default 1000), BENCH_WATCH_SCALE_SUBSCRIBERS (default 10000; 0
skips the scale runs), BENCH_WATCH_SCALE_INTERVAL_MS (default 100), DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from google.protobuf import field_mask_pb2
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from bench import harness, loadgen
from bench.harness import (
    ROOT,
    Proc,
    bench_server_url,
    own_database,
    say,
    start_empty,
    start_service,
)
from domain.ids import new_ulid

CHANGES = int(os.environ.get("BENCH_WATCH_CHANGES", "40"))
INTERVAL_S = int(os.environ.get("BENCH_WATCH_INTERVAL_MS", "150")) / 1000
SUBSCRIBERS = int(os.environ.get("BENCH_WATCH_SUBSCRIBERS", "1000"))
SCALE_SUBSCRIBERS = int(os.environ.get("BENCH_WATCH_SCALE_SUBSCRIBERS", "10000"))
SCALE_CHANGES = int(os.environ.get("BENCH_WATCH_SCALE_CHANGES", "20"))
SCALE_INTERVAL_S = int(os.environ.get("BENCH_WATCH_SCALE_INTERVAL_MS", "1000")) / 1000
# While EvaluateFlag is measured: a change every LOAD_INTERVAL_S to every stream.
LOAD_INTERVAL_S = int(os.environ.get("BENCH_WATCH_LOAD_INTERVAL_MS", "100")) / 1000
# How long the deliveries of a phase may take to arrive after its last change.
DRAIN_TIMEOUT_S = 120.0
STREAMS_PER_CONNECTION = 100
# Streams opened at once, each wave's snapshots received before the next opens.
OPEN_WAVE = 500
N_FLAGS = 20
KEY = "bench.flag-0"
# EvaluateFlag load while streaming: bench/loadgen.py's concurrency and seconds.
LOAD_CONCURRENCY = 64
LOAD_SECONDS = 3.0
LOAD_WARM_UP = 0.5


@dataclass
class Subscriber:
    replica: str
    received: dict[int, float] = field(default_factory=dict)  # version -> monotonic time
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


@dataclass
class Run:
    """One scenario's deliveries: latencies (ms, NaN for each missing one) per replica."""

    latencies: dict[str, list[float]]
    server_cpu_s: dict[str, float]  # per replica


@dataclass
class Row:
    scenario: str
    subscribers: int
    samples: int
    missing: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_us: float  # server CPU per delivered message
    baseline_cpu_us: float | None = None


@dataclass
class Scale:
    """What a scale run measures besides its deliveries."""

    scenario: str
    rss_mb_before: float
    rss_mb_after: float
    subscribers: int
    idle_rps: float
    streaming_rps: float
    drained_s: float  # last delivery - last change, while streaming under load
    streaming_missing: int


def seed(url: str) -> None:
    with psycopg.connect(url, options="-c search_path=platform_admin") as conn:
        for i in range(N_FLAGS):
            conn.execute(
                "INSERT INTO feature_flags (key, description) VALUES (%s, %s)",
                (f"bench.flag-{i}", f"bench flag {i}"),
            )
        conn.commit()


async def _subscribe(stub: flag_pb2_grpc.FlagServiceStub, sub: Subscriber) -> None:
    call = stub.WatchFlags(flag_pb2.WatchFlagsRequest(keys=[KEY]))
    try:
        async for message in call:
            what = message.WhichOneof("event")
            if what == "flag_changed":
                sub.received[int(message.flag_changed.etag)] = time.monotonic()
            elif what == "snapshot_end":
                sub.ready.set()
    except grpc.aio.AioRpcError as exc:
        # Any end but the bench's own cancellation (a CancelledError, not a status).
        sub.error = f"{exc.code().name}: {exc.details()}"
    finally:
        sub.ready.set()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    return sum(harness.cpu_seconds(pid) for pid in pids)


@contextlib.asynccontextmanager
async def open_streams(ports: dict[str, int], count: int) -> AsyncIterator[list[Subscriber]]:
    """``count`` WatchFlags streams spread over ``ports``, every snapshot received."""
    channels: list[grpc.aio.Channel] = []
    tasks: list[asyncio.Task[None]] = []
    names = list(ports)
    subscribers = [Subscriber(names[i % len(names)]) for i in range(count)]
    try:
        # Connections: STREAMS_PER_CONNECTION streams each, per replica.
        stubs: dict[str, list[flag_pb2_grpc.FlagServiceStub]] = {}
        for name, port in ports.items():
            streams = sum(1 for s in subscribers if s.replica == name)
            stubs[name] = []
            for i in range(-(-streams // STREAMS_PER_CONNECTION)):
                channel = grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}",
                    # One connection each (workers behind one port get theirs by the kernel).
                    options=[("grpc.channel_id", i), ("grpc.use_local_subchannel_pool", 1)],
                )
                channels.append(channel)
                stubs[name].append(flag_pb2_grpc.FlagServiceStub(channel))
        seen: dict[str, int] = dict.fromkeys(ports, 0)
        started = time.monotonic()
        for first in range(0, count, OPEN_WAVE):
            wave = subscribers[first : first + OPEN_WAVE]
            for sub in wave:
                stub = stubs[sub.replica][seen[sub.replica] // STREAMS_PER_CONNECTION]
                seen[sub.replica] += 1
                tasks.append(asyncio.create_task(_subscribe(stub, sub)))
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in wave)), 300)
        failed = [s.error for s in subscribers if s.error]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0]}")
        say(f"  {len(subscribers):,} streams open in {time.monotonic() - started:.1f}s")
        yield subscribers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


async def write_changes(port: int, changes: int, interval_s: float) -> dict[int, float]:
    """Changes KEY ``changes`` times; each version -> when its UpdateFlag returned."""
    committed: dict[int, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        writer = flag_pb2_grpc.FlagServiceStub(channel)
        for i in range(changes):
            reply = await writer.UpdateFlag(
                flag_pb2.UpdateFlagRequest(
                    key=KEY,
                    description=f"change {time.time_ns()} {i}",
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                )
            )
            committed[int(reply.flag.etag)] = time.monotonic()
            await asyncio.sleep(interval_s)
    return committed


async def delivered(
    subscribers: list[Subscriber], committed: dict[int, float]
) -> dict[str, list[float]]:
    """Waits (at most DRAIN_TIMEOUT_S) for every delivery; latencies per replica, NaN
    where missing."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(all(v in s.received for v in committed) for s in subscribers):
            break
        await asyncio.sleep(0.1)
    latencies: dict[str, list[float]] = {}
    for sub in subscribers:
        into = latencies.setdefault(sub.replica, [])
        for version, at in committed.items():
            got = sub.received.get(version)
            into.append(float("nan") if got is None else (got - at) * 1000)
    return latencies


async def measure(
    subscribers: list[Subscriber],
    writer_port: int,
    pids: dict[str, list[int]],
    interval_s: float,
    changes: int = CHANGES,
) -> Run:
    """``changes`` changes through ``writer_port``; their deliveries and each replica's CPU."""
    await asyncio.sleep(0.5)
    cpu_before = {name: cpu_seconds(ids) for name, ids in pids.items()}
    own_before = time.process_time()
    committed = await write_changes(writer_port, changes, interval_s)
    latencies = await delivered(subscribers, committed)
    server_s = {name: cpu_seconds(ids) - cpu_before[name] for name, ids in pids.items()}
    own_ms = (time.process_time() - own_before) / changes * 1000
    total_ms = sum(server_s.values()) / changes * 1000
    say(f"  CPU per change: servers {total_ms:.1f} ms, own {own_ms:.1f} ms")
    for name, values in latencies.items():
        missing = sum(1 for v in values if v != v)
        if missing:
            say(f"  {missing} deliveries missing on {name}")
    return Run(latencies, server_s)


def evaluate_body(workdir: Path) -> Path:
    """The EvaluateFlag request bench/loadgen.py sends, as a file."""
    body = workdir / "evaluate-flag.bin"
    request = flag_pb2.EvaluateFlagRequest(key="bench.flag-1", tenant_id=new_ulid())
    body.write_bytes(request.SerializeToString())
    return body


async def evaluate_rps(port: int, body: Path) -> float:
    """EvaluateFlag RPC/s from bench/loadgen.py (its own process), c=LOAD_CONCURRENCY."""
    args = loadgen.command(
        port,
        "/platform_admin.v1.FlagService/EvaluateFlag",
        body,
        LOAD_CONCURRENCY,
        LOAD_SECONDS,
        LOAD_WARM_UP,
    )
    process = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), LOAD_SECONDS + 60)
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.decode(errors='replace')}")
    figures = loadgen.figures(out.decode())
    if figures["failed"]:
        raise RuntimeError(f"loadgen: {figures['failed']} EvaluateFlag calls failed")
    return float(figures["rps"])


async def streaming_rps(
    subscribers: list[Subscriber], port: int, body: Path
) -> tuple[float, float, int]:
    """EvaluateFlag RPC/s while a change goes to every stream each LOAD_INTERVAL_S; then
    how long after the last change its last delivery arrived, and how many never did."""
    changes = int((LOAD_SECONDS + LOAD_WARM_UP) / LOAD_INTERVAL_S)
    load = asyncio.create_task(evaluate_rps(port, body))
    committed = await write_changes(port, changes, LOAD_INTERVAL_S)
    rps = await load
    latencies = await delivered(subscribers, committed)
    last_commit = max(committed.values())
    last = max(max(s.received.values(), default=last_commit) for s in subscribers)
    missing = sum(1 for values in latencies.values() for v in values if v != v)
    return rps, last - last_commit, missing


async def scale_run(name: str, proc: Proc, body: Path) -> tuple[Run, Scale]:
    idle = await evaluate_rps(proc.port, body)
    rss_before = proc.rss_mb()
    async with open_streams({"A": proc.port}, SCALE_SUBSCRIBERS) as subscribers:
        await asyncio.sleep(1.0)
        rss_after = proc.rss_mb()
        pids = {"A": proc.pids()}
        run = await measure(subscribers, proc.port, pids, SCALE_INTERVAL_S, SCALE_CHANGES)
        rps, drained_s, missing = await streaming_rps(subscribers, proc.port, body)
    say(
        f"  EvaluateFlag {idle:,.0f} RPC/s idle, {rps:,.0f} RPC/s while streaming;"
        f" backlog drained {drained_s:.1f}s after the last change"
    )
    return run, Scale(name, rss_before, rss_after, SCALE_SUBSCRIBERS, idle, rps, drained_s, missing)


def _row(scenario: str, run: Run, replica: str | None, subscribers: int) -> Row:
    """One replica's deliveries and CPU, or (``None``) all replicas' together."""
    names = list(run.latencies) if replica is None else [replica]
    values = [v for name in names for v in run.latencies[name]]
    server_cpu_s = sum(run.server_cpu_s[name] for name in names)
    missing = sum(1 for v in values if v != v)
    clean = [v for v in values if v == v] or [float("nan")]
    return Row(
        scenario,
        subscribers,
        len(values) - missing,
        missing,
        statistics.median(clean),
        _percentile(clean, 0.99),
        max(clean),
        server_cpu_s / max(1, len(values) - missing) * 1e6,
    )


def fmt_table(rows: list[Row]) -> str:
    header = (
        "| scenario | subscribers | deliveries | missing | p50 ms | p99 ms | max ms"
        " | server CPU µs/delivery | vs empty fan-out |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r.cpu_us / r.baseline_cpu_us:.2f}×" if r.baseline_cpu_us else ""
        lines.append(
            f"| {r.scenario} | {r.subscribers:,} | {r.samples:,} | {r.missing} |"
            f" {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | {r.cpu_us:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def fmt_scale(scales: list[Scale]) -> str:
    lines = [
        "| scale run | resident MB before → with streams | KB per stream"
        " | EvaluateFlag RPC/s idle | while streaming | ratio | backlog drained s"
        " | missing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scales:
        per = (s.rss_mb_after - s.rss_mb_before) * 1024 / s.subscribers
        lines.append(
            f"| {s.scenario} | {s.rss_mb_before:.0f} → {s.rss_mb_after:.0f} | {per:.1f}"
            f" | {s.idle_rps:,.0f} | {s.streaming_rps:,.0f}"
            f" | {s.streaming_rps / s.idle_rps:.2f}× | {s.drained_s:.1f}"
            f" | {s.streaming_missing} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def services(
    url: str,
    workdir: Path,
    count: int,
    *,
    workers: int = 1,
    settings: dict[str, str] | None = None,
) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(count):
            procs.append(start_service(url, workdir, workers=workers, settings=settings))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@contextlib.contextmanager
def empty_fan_out(workdir: Path) -> Iterator[Proc]:
    """bench/empty_server.py: the baseline every scenario is compared with."""
    proc = start_empty(workdir)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def one_service(url: str, workdir: Path, workers: int, settings: dict[str, str]) -> Iterator[Proc]:
    with services(url, workdir, 1, workers=workers, settings=settings) as (proc,):
        yield proc


async def one_scenario(procs: dict[str, Proc], writer: str, count: int) -> Run:
    ports = {name: proc.port for name, proc in procs.items()}
    pids = {name: proc.pids() for name, proc in procs.items()}
    async with open_streams(ports, count) as subscribers:
        return await measure(subscribers, ports[writer], pids, INTERVAL_S)


def main() -> int:
    say(
        f"bench-watch: {SUBSCRIBERS:,} subscribers, {CHANGES} changes every"
        f" {INTERVAL_S * 1000:.0f} ms; scale: {SCALE_SUBSCRIBERS:,} subscribers,"
        f" {SCALE_CHANGES} changes every {SCALE_INTERVAL_S * 1000:.0f} ms, then one every"
        f" {LOAD_INTERVAL_S * 1000:.0f} ms under EvaluateFlag load"
    )
    rows: list[Row] = []
    scales: list[Scale] = []
    with (
        bench_server_url() as server_url,
        own_database(server_url, "pa_bench_watch") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        seed(url)
        workdir = Path(tmp)
        say("empty fan-out (baseline)")
        with empty_fan_out(workdir) as empty:
            base = asyncio.run(one_scenario({"E": empty}, "E", SUBSCRIBERS))
        rows.append(_row("empty fan-out (baseline)", base, "E", SUBSCRIBERS))
        baseline_us = rows[0].cpu_us
        say("one replica")
        with services(url, workdir, 1) as (a,):
            one = asyncio.run(one_scenario({"A": a}, "A", SUBSCRIBERS))
        rows.append(_row("one replica", one, "A", SUBSCRIBERS))
        say("two replicas, writes through A")
        with services(url, workdir, 2) as (a, b):
            two = asyncio.run(one_scenario({"A": a, "B": b}, "A", SUBSCRIBERS))
        rows.append(_row("two replicas: all", two, None, SUBSCRIBERS))
        half = SUBSCRIBERS // 2
        rows.append(_row("two replicas: on A (writes through A)", two, "A", half))
        rows.append(_row("two replicas: on B (the other replica)", two, "B", half))
        if SCALE_SUBSCRIBERS:
            limits = {
                "PLATFORM_ADMIN_WATCH_MAX_STREAMS": str(SCALE_SUBSCRIBERS * 2),
                # Authentication is off: every stream is one principal's.
                "PLATFORM_ADMIN_WATCH_MAX_STREAMS_PER_PRINCIPAL": str(SCALE_SUBSCRIBERS * 2),
            }
            body = evaluate_body(workdir)
            servers: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Proc]]]] = [
                ("the empty fan-out (baseline)", lambda: empty_fan_out(workdir)),
                ("one process", lambda: one_service(url, workdir, 1, limits)),
                ("one process, 2 workers", lambda: one_service(url, workdir, 2, limits)),
            ]
            for where, server in servers:
                name = f"{SCALE_SUBSCRIBERS:,} on {where}"
                say(name)
                with server() as proc:
                    run, scale = asyncio.run(scale_run(name, proc, body))
                rows.append(_row(name, run, "A", SCALE_SUBSCRIBERS))
                scales.append(scale)
    for row in rows:
        row.baseline_cpu_us = baseline_us
    print(fmt_table(rows))
    if scales:
        print()
        print(fmt_scale(scales))
    clean = all(r.missing == 0 for r in rows) and all(s.streaming_missing == 0 for s in scales)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
