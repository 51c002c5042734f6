"""`make bench-health`: HealthService reads over a year of check results (5 million rows).

What it does (a few minutes, mostly the load):

1. Uses its own database ``pa_bench_health``, on DATABASE_URL's server or on an embedded
   PostgreSQL under ``.data/pg-bench``, migrated like production.
2. Registers ``BENCH_HEALTH_SOURCES`` sources (default 100) and inserts
   ``BENCH_HEALTH_RESULTS`` results (default 5,000,000: 100 services checked every ~10
   minutes for a year) with one INSERT … SELECT generate_series per chunk of sources. The
   secondary indexes are dropped during the load and rebuilt after it (their definitions
   are read from pg_indexes, so the rebuilt ones are exactly the migrated ones), and the
   foreign-key trigger is skipped (session_replication_role = replica): the rows are made
   to be valid. Then ANALYZE, and every source gets its latest result as the prober would
   have left it.
3. Starts ``platform-admin serve`` (prober off) and measures, one call at a time through
   the generated stubs: ListCheckResults for one source over one day (a random source and a
   random day of the year per call, the whole day in one page), GetPlatformHealth and
   ReportHeartbeat; then heartbeats with 16 calls in flight (throughput).
4. Prints EXPLAIN (ANALYZE, BUFFERS) of the two queries exactly as storage/health.py runs
   them, to show that both are served by indexes / never scan the history.

Environment: BENCH_HEALTH_SOURCES, BENCH_HEALTH_RESULTS, BENCH_HEALTH_CALLS (default 300),
BENCH_HEALTH_KEEP=1 (keep the database afterwards), DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import health_pb2, health_pb2_grpc
from psycopg import sql as pgsql

from bench.harness import bench_server_url, own_database, say, start_service
from domain.ids import HEALTH_SOURCE, new_ulid, with_prefix
from storage import health

SOURCES = int(os.environ.get("BENCH_HEALTH_SOURCES", "100"))
RESULTS = int(os.environ.get("BENCH_HEALTH_RESULTS", "5000000"))
CALLS = int(os.environ.get("BENCH_HEALTH_CALLS", "300"))
KEEP = os.environ.get("BENCH_HEALTH_KEEP", "") == "1"
DB_NAME = "pa_bench_health"
DAYS = 365
CHUNKS = 10

# One row per (source, n): checked every DAYS*86400/per_source seconds up to now, with a
# time-ordered 26-character id ('0' + 12 hex digits of epoch ms + 13 hex digits of a
# counter: hex digits are Crockford base32 digits, so ids pass the ULID checks).
_LOAD = """
INSERT INTO health_check_results (id, source_id, status, checked_at, details)
SELECT '0' || lpad(upper(to_hex((extract(epoch FROM t.at) * 1000)::bigint)), 12, '0')
           || lpad(upper(to_hex(t.seq)), 13, '0'),
       t.source_id,
       CASE WHEN t.r < 0.97 THEN 'healthy' WHEN t.r < 0.99 THEN 'degraded' ELSE 'unhealthy' END,
       t.at,
       jsonb_build_object('probe', 'http', 'latency_ms', round((t.r * 40)::numeric, 1),
                          'http_status', CASE WHEN t.r < 0.99 THEN 200 ELSE 503 END)
  FROM (SELECT s.id AS source_id,
               s.ord * %(per_source)s + g AS seq,
               %(now)s - make_interval(secs => g * %(step_s)s + s.ord) AS at,
               random() AS r
          FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM health_sources) s,
               generate_series(0, %(per_source)s - 1) AS g
         WHERE s.ord > %(from_ord)s AND s.ord <= %(to_ord)s) t
"""
_LATEST = """
UPDATE health_sources s
   SET (status, status_since, last_check_at, last_details) =
       (SELECT status, checked_at, checked_at, details FROM health_check_results
         WHERE source_id = s.id ORDER BY checked_at DESC LIMIT 1),
       consecutive_successes = 1
"""


def load(url: str) -> tuple[list[str], float]:
    """Sources and results; returns the source ids and the seconds the load took."""
    per_source = RESULTS // SOURCES
    step_s = DAYS * 86400 / per_source
    now = datetime.now(UTC)
    ids = [new_ulid() for _ in range(SOURCES)]
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True, options="-c search_path=platform_admin") as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO health_sources (id, service_id, health_url) VALUES (%s, %s, %s)",
                [(sid, f"svc-{i:03d}", "http://127.0.0.1:9/health") for i, sid in enumerate(ids)],
            )
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'platform_admin'"
            " AND tablename = 'health_check_results' AND indexname <> 'health_check_results_pkey'"
        ).fetchall()
        # The primary key too: one sorted build after the load beats 5 million insertions.
        conn.execute("ALTER TABLE health_check_results DROP CONSTRAINT health_check_results_pkey")
        for name, _ in indexes:
            conn.execute(pgsql.SQL("DROP INDEX {}").format(pgsql.Identifier(name)))
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '256MB'")
        per_chunk = max(SOURCES // CHUNKS, 1)
        for start in range(0, SOURCES, per_chunk):
            conn.execute(
                _LOAD,
                {
                    "per_source": per_source,
                    "step_s": step_s,
                    "now": now,
                    "from_ord": start,
                    "to_ord": start + per_chunk,
                },
            )
            done = min(start + per_chunk, SOURCES) * per_source
            say(f"  {done:>10,} results  ({time.monotonic() - started:5.1f} s)")
        conn.execute("SET session_replication_role = origin")
        pk_started = time.monotonic()
        conn.execute(
            "ALTER TABLE health_check_results"
            " ADD CONSTRAINT health_check_results_pkey PRIMARY KEY (id)"
        )
        say(f"  rebuilt health_check_results_pkey ({time.monotonic() - pk_started:.1f} s)")
        for name, definition in indexes:
            index_started = time.monotonic()
            conn.execute(definition)
            say(f"  rebuilt {name} ({time.monotonic() - index_started:.1f} s)")
        conn.execute("ANALYZE health_check_results")
        conn.execute(_LATEST)
        conn.execute("ANALYZE health_sources")
    return ids, time.monotonic() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _time(calls: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    for _ in range(10):  # warm-up: connection, server caches
        last = await call()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        last = await call()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, last


async def measure(port: int, ids: list[str]) -> list[tuple[str, list[float], str]]:
    rng = random.Random(5)
    now = datetime.now(UTC)
    rows = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)
        sizes: list[int] = []

        async def one_day() -> health_pb2.ListCheckResultsResponse:
            end_at = now - timedelta(days=rng.randrange(0, DAYS - 1))
            start, end = Timestamp(), Timestamp()
            start.FromDatetime(end_at - timedelta(days=1))
            end.FromDatetime(end_at)
            reply = await stub.ListCheckResults(
                health_pb2.ListCheckResultsRequest(
                    source_id=with_prefix(HEALTH_SOURCE, rng.choice(ids)),
                    start_time=start,
                    end_time=end,
                    page_size=1000,
                )
            )
            sizes.append(len(reply.results))
            return reply

        latencies, _ = await _time(CALLS, one_day)
        rows.append(
            (
                "ListCheckResults, 1 source, 1 day",
                latencies,
                f"{statistics.mean(sizes):.0f} results/call",
            )
        )

        async def platform() -> health_pb2.GetPlatformHealthResponse:
            return await stub.GetPlatformHealth(health_pb2.GetPlatformHealthRequest())

        latencies, last = await _time(CALLS, platform)
        status = health_pb2.HealthStatus.Name(last.status)
        rows.append(("GetPlatformHealth", latencies, f"{len(last.sources)} sources, {status}"))

        async def heartbeat() -> health_pb2.ReportHeartbeatResponse:
            service = f"svc-{rng.randrange(SOURCES):03d}"
            return await stub.ReportHeartbeat(health_pb2.ReportHeartbeatRequest(service_id=service))

        latencies, _ = await _time(CALLS, heartbeat)
        rows.append(("ReportHeartbeat", latencies, "one UPDATE by service_id"))
        # Many services at once: 16 callers in flight.
        started = time.perf_counter()
        total = CALLS * 10

        async def caller(n: int) -> None:
            for _ in range(n):
                await heartbeat()

        await asyncio.gather(*(caller(total // 16) for _ in range(16)))
        rate = (total // 16 * 16) / (time.perf_counter() - started)
        rows.append(("ReportHeartbeat, 16 in flight", [], f"{rate:,.0f} heartbeats/s"))
    return rows


def explain(url: str, ids: list[str]) -> str:
    end_at = datetime.now(UTC) - timedelta(days=120)
    params = {
        "source_id": ids[len(ids) // 2],
        "start": end_at - timedelta(days=1),
        "end": end_at,
        "after_time": None,
        "after_id": None,
        "limit": 1001,
    }
    out = []
    with psycopg.connect(url, autocommit=True, options="-c search_path=platform_admin") as conn:
        for title, query, args in (
            ("ListCheckResults (storage.health.LIST_RESULTS)", health.LIST_RESULTS, params),
            ("GetPlatformHealth (storage.health.PLATFORM)", health.PLATFORM, None),
        ):
            plan = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query,  # type: ignore[operator]
                args,
            ).fetchall()
            out.append(f"--- {title}\n" + "\n".join(row[0] for row in plan))
        sizes = conn.execute(
            "SELECT count(*), pg_size_pretty(pg_total_relation_size('health_check_results'))"
            "  FROM health_check_results"
        ).fetchone()
    assert sizes is not None
    out.insert(0, f"health_check_results: {sizes[0]:,} rows, {sizes[1]} with indexes")
    return "\n\n".join(out)


@contextlib.contextmanager
def database(server_url: str) -> Iterator[str]:
    if not KEEP:
        with own_database(server_url, DB_NAME) as url:
            yield url
        return
    # Kept: the same creation, without the drop at the end.
    manager = own_database(server_url, DB_NAME)
    url = manager.__enter__()
    yield url


def main() -> int:
    os.environ["PLATFORM_ADMIN_PROBE_ENABLED"] = "false"
    with bench_server_url() as server_url, database(server_url) as url:
        say(f"bench-health: loading {SOURCES} sources and {RESULTS:,} results into {DB_NAME}")
        ids, seconds = load(url)
        say(f"  load + index rebuild + analyze: {seconds:.1f} s ({RESULTS / seconds:,.0f} rows/s)")
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_service(url, Path(tmp))
            try:
                rows = asyncio.run(measure(proc.port, ids))
            finally:
                proc.stop()
        print(f"\nHealthService over {RESULTS:,} check results ({SOURCES} sources, {DAYS} days)")
        print(f"{CALLS} sequential calls each, Python grpc.aio client, one server process")
        load1, load5, _ = os.getloadavg()
        print(f"machine load average during the run: {load1:.1f} (1 min), {load5:.1f} (5 min)\n")
        print("| call | p50 ms | p99 ms | mean ms | answer |\n|---|---|---|---|---|")
        for name, latencies, note in rows:
            if not latencies:
                print(f"| {name} | | | | {note} |")
                continue
            print(
                f"| {name} | {_pct(latencies, 0.5):.2f} | {_pct(latencies, 0.99):.2f}"
                f" | {statistics.mean(latencies):.2f} | {note} |"
            )
        print()
        print(explain(url, ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
