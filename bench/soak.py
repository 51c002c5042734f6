"""Mixed-load soak of one ``platform-admin serve`` process (``make soak``; not part of CI).

Runs for SOAK_SECONDS (default 300) against a fresh database (on DATABASE_URL, else the
embedded PostgreSQL under .data/): config and flag writes, reads, 200 watch streams (half
WatchFlags, half WatchConfigs, each resuming by cursor if it is ended) and health probes
(registered sources the server's prober checks, served by this script on loopback; plus
grpc.health.v1 checks). Every SOAK_SAMPLE_S it prints the server's RSS, open file
descriptors, pool usage and stream figures read from /metrics; at the end it checks that
every stream received every change exactly once and prints the summary. Exit status 1
when an event was lost or duplicated, or a call failed other than with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import grpc
import psycopg
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from bench.harness import free_port
from domain.ids import new_ulid

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
SAMPLE_S = float(os.environ.get("SOAK_SAMPLE_S", str(max(5.0, min(30.0, SECONDS / 12)))))
STREAMS = int(os.environ.get("SOAK_STREAMS", "200"))
TENANTS = 20
FLAGS = 10
PROBED_SOURCES = 5
CONFIG_KEY = "global.password_min_length"
ALLOWED_FAILURES = {"UNAVAILABLE"}


def admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    from server.ops import embedded_db

    _, uri = embedded_db.start(ROOT / ".data")
    return uri


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[str, dict[Any, float]], name: str) -> float:
    return sum(samples.get(name, {}).values())


class Subscriber:
    """One watch stream that resumes by cursor when ended; records versions per identity."""

    def __init__(self, kind: str, channel: grpc.aio.Channel) -> None:
        self.kind = kind
        self.config = config_pb2_grpc.ConfigServiceStub(channel)
        self.flag = flag_pb2_grpc.FlagServiceStub(channel)
        self.cursor = ""
        self.snapshot: dict[Hashable, int] = {}
        self.changes: dict[Hashable, list[int]] = {}
        self.ends: Counter[str] = Counter()
        self.received = 0
        self._call: Any = None
        self._stopping = False

    def _open(self) -> Any:
        if self.kind == "flags":
            return self.flag.WatchFlags(flag_pb2.WatchFlagsRequest(cursor=self.cursor))
        return self.config.WatchConfigs(config_pb2.WatchConfigsRequest(cursor=self.cursor))

    async def run(self) -> None:
        while not self._stopping:
            self._call = self._open()
            try:
                async for m in self._call:
                    what = m.WhichOneof("event")
                    if what in ("snapshot", "flag_changed", "config_changed"):
                        item = getattr(m, what)
                        identity: Hashable = (
                            item.key
                            if self.kind == "flags"
                            else (item.key, item.scope, item.tenant_id)
                        )
                        if what == "snapshot":
                            self.snapshot[identity] = int(item.etag)
                        else:
                            self.changes.setdefault(identity, []).append(int(item.etag))
                            self.received += 1
                    if m.cursor:
                        self.cursor = m.cursor
            except grpc.aio.AioRpcError as error:
                if not self._stopping:
                    self.ends[error.code().name] += 1
            await asyncio.sleep(0.2)

    def latest(self, identity: Hashable) -> int:
        return max([self.snapshot.get(identity, 0), *self.changes.get(identity, [])])

    def stop(self) -> None:
        self._stopping = True
        if self._call is not None:
            self._call.cancel()

    def audit(self, final: dict[Hashable, int]) -> tuple[int, int, int]:
        """(expected, lost, duplicated) change events for this stream."""
        expected = lost = duplicated = 0
        for identity, version in final.items():
            start = self.snapshot.get(identity, 0)
            got = self.changes.get(identity, [])
            want = set(range(start + 1, version + 1))
            expected += len(want)
            lost += len(want - set(got))
            duplicated += len(got) - len(set(got))
        return expected, lost, duplicated


class Load:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.config = config_pb2_grpc.ConfigServiceStub(channel)
        self.flag = flag_pb2_grpc.FlagServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.tenants = [new_ulid() for _ in range(TENANTS)]
        self.flags = [f"soak.flag{i}" for i in range(FLAGS)]
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.running = True

    async def _call(self, kind: str, call: Any) -> Any:
        try:
            answer = await call
            self.outcomes[(kind, "OK")] += 1
            return answer
        except grpc.aio.AioRpcError as error:
            self.outcomes[(kind, error.code().name)] += 1
            return None

    async def setup(self) -> None:
        for key in self.flags:
            await self._call("write", self.flag.CreateFlag(flag_pb2.CreateFlagRequest(key=key)))

    async def config_writer(self, seed: int) -> None:
        rng = random.Random(seed)
        values: dict[str, int] = {}
        while self.running:
            tenant = rng.choice(self.tenants)
            values[tenant] = 8 + (values.get(tenant, 0) + 1) % 120
            await self._call(
                "write",
                self.config.SetConfig(
                    config_pb2.SetConfigRequest(
                        key=CONFIG_KEY,
                        scope=config_pb2.CONFIG_SCOPE_TENANT,
                        tenant_id=tenant,
                        value=config_pb2.ConfigValue(int_value=values[tenant]),
                    ),
                    timeout=10,
                ),
            )
            await asyncio.sleep(0.1)

    async def flag_writer(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while self.running:
            n += 1
            await self._call(
                "write",
                self.flag.UpdateFlag(
                    flag_pb2.UpdateFlagRequest(
                        key=rng.choice(self.flags), description=f"soak {seed}.{n}"
                    ),
                    timeout=10,
                ),
            )
            await asyncio.sleep(0.2)

    async def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            tenant = rng.choice(self.tenants)
            choice = rng.randrange(4)
            if choice == 0:
                call = self.config.ResolveConfig(
                    config_pb2.ResolveConfigRequest(key=CONFIG_KEY, tenant_id=tenant), timeout=10
                )
            elif choice == 1:
                call = self.config.ResolveConfigs(
                    config_pb2.ResolveConfigsRequest(tenant_id=tenant), timeout=10
                )
            elif choice == 2:
                call = self.flag.EvaluateFlag(
                    flag_pb2.EvaluateFlagRequest(key=rng.choice(self.flags), tenant_id=tenant),
                    timeout=10,
                )
            else:
                call = self.config.ListConfigHistory(
                    config_pb2.ListConfigHistoryRequest(
                        key=CONFIG_KEY,
                        scope=config_pb2.CONFIG_SCOPE_TENANT,
                        tenant_id=tenant,
                        page_size=10,
                    ),
                    timeout=10,
                )
            await self._call("read", call)
            await asyncio.sleep(0.01)

    async def health_checker(self) -> None:
        while self.running:
            await self._call("probe", self.health.Check(health_pb2.HealthCheckRequest(), timeout=5))
            await asyncio.sleep(0.5)


async def probed_endpoint() -> tuple[web.AppRunner, str, Counter[str]]:
    """A loopback HTTP health endpoint for the prober: mostly 200, sometimes 503."""
    hits: Counter[str] = Counter()
    rng = random.Random(7)

    async def handle(request: web.Request) -> web.Response:
        status = 503 if rng.random() < 0.1 else 200
        hits[str(status)] += 1
        return web.json_response({"status": "ok" if status == 200 else "down"}, status=status)

    app = web.Application()
    app.router.add_get("/health", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/health", hits


async def register_sources(channel: grpc.aio.Channel, url: str) -> int:
    try:
        from platform_admin.v1 import health_pb2 as pa
        from platform_admin.v1 import health_pb2_grpc as pa_grpc
    except ImportError:
        return 0
    stub = pa_grpc.HealthServiceStub(channel)
    made = 0
    for i in range(PROBED_SOURCES):
        try:
            await stub.CreateHealthSource(
                pa.CreateHealthSourceRequest(
                    service_id=f"soak-{i}", health_url=url, check_interval_s=1
                ),
                timeout=10,
            )
            made += 1
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return 0
            raise
    return made


def final_state(conninfo: str) -> tuple[dict[Hashable, int], dict[Hashable, int]]:
    with psycopg.connect(conninfo, options="-c search_path=platform_admin") as conn:
        flags = dict(conn.execute("SELECT key, version FROM feature_flags").fetchall())
        configs = {
            (key, getattr(config_pb2, f"CONFIG_SCOPE_{scope}"), tenant or ""): version
            for key, scope, tenant, version in conn.execute(
                "SELECT key, scope, tenant_id, version FROM platform_configs"
            ).fetchall()
        }
    return flags, configs


def row(cells: list[str]) -> str:
    return "  ".join(cells)


async def soak(conninfo: str) -> int:
    grpc_port, metrics_port = free_port(), free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="platform-admin-soak-", suffix=".log")  # noqa: SIM115
    env = {
        **os.environ,
        "DATABASE_URL": conninfo,
        "PLATFORM_ADMIN_LISTEN": f"127.0.0.1:{grpc_port}",
        "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PLATFORM_ADMIN_WORKERS": "1",
        # The probed sources are this script's loopback endpoint.
        "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": "127.0.0.1/32",
    }
    server = subprocess.Popen(  # noqa: ASYNC220
        [str(BIN / "platform-admin"), "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    runner, url, hits = await probed_endpoint()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                if server.poll() is not None:
                    raise SystemExit("server exited at start; see its log")
                await asyncio.sleep(0.1)
            load = Load(channel)
            await load.setup()
            sources = await register_sources(channel, url)
            subscribers = [
                Subscriber("flags" if i % 2 else "configs", channel) for i in range(STREAMS)
            ]
            tasks = [asyncio.create_task(s.run()) for s in subscribers]
            tasks += [asyncio.create_task(load.config_writer(i)) for i in range(3)]
            tasks += [asyncio.create_task(load.flag_writer(i)) for i in range(2)]
            tasks += [asyncio.create_task(load.reader(i)) for i in range(4)]
            tasks.append(asyncio.create_task(load.health_checker()))

            print(
                f"soak: {SECONDS:.0f}s, {STREAMS} streams, {sources} probed health sources,"
                f" server pid {server.pid}, sample every {SAMPLE_S:.0f}s"
            )
            header = (
                f"{'t_s':>6} {'rpc/s':>7} {'rss_MB':>7} {'fds':>5} {'pool':>5} {'in_use':>6}"
                f" {'waiting':>7} {'streams':>7} {'sent/s':>8} {'unseq':>6} {'lag_s':>6}"
                f" {'probes':>6}"
            )
            print(header)
            samples: list[dict[str, float]] = []
            started = time.monotonic()
            previous: dict[str, float] | None = None
            while (elapsed := time.monotonic() - started) < SECONDS:
                await asyncio.sleep(min(SAMPLE_S, max(0.0, SECONDS - elapsed)))
                m = await asyncio.to_thread(scrape, metrics_port)
                now = {
                    "t": time.monotonic() - started,
                    "rpcs": total(m, "platform_admin_rpcs_total"),
                    "rss": total(m, "process_resident_memory_bytes") / 2**20,
                    "fds": total(m, "process_open_fds"),
                    "pool": total(m, "platform_admin_db_pool_size"),
                    "in_use": total(m, "platform_admin_db_pool_in_use"),
                    "waiting": total(m, "platform_admin_db_pool_waiting"),
                    "streams": total(m, "platform_admin_watch_subscribers"),
                    "sent": total(m, "platform_admin_watch_events_sent_total"),
                    "unseq": total(m, "platform_admin_outbox_unsequenced_rows"),
                    "lag": total(m, "platform_admin_sequencer_lag_seconds"),
                    "probes": total(m, "platform_admin_probe_results_total"),
                }
                span = now["t"] - (previous["t"] if previous else 0.0)
                rate = (now["rpcs"] - (previous["rpcs"] if previous else 0.0)) / span
                sent = (now["sent"] - (previous["sent"] if previous else 0.0)) / span
                print(
                    f"{now['t']:6.0f} {rate:7.0f} {now['rss']:7.1f} {now['fds']:5.0f}"
                    f" {now['pool']:5.0f} {now['in_use']:6.0f} {now['waiting']:7.0f}"
                    f" {now['streams']:7.0f} {sent:8.0f} {now['unseq']:6.0f} {now['lag']:6.2f}"
                    f" {now['probes']:6.0f}",
                    flush=True,
                )
                samples.append(now)
                previous = now

            load.running = False
            await asyncio.sleep(0.5)
            flags, configs = final_state(conninfo)

            def caught_up() -> bool:
                return all(
                    s.latest(i) >= v
                    for s in subscribers
                    for i, v in (flags if s.kind == "flags" else configs).items()
                )

            deadline = time.monotonic() + 60
            while not caught_up() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            for s in subscribers:
                s.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await runner.cleanup()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log_file.close()

    expected = lost = duplicated = 0
    for s in subscribers:
        e, lo, d = s.audit(flags if s.kind == "flags" else configs)
        expected, lost, duplicated = expected + e, lost + lo, duplicated + d
    received = sum(s.received for s in subscribers)
    ends = sum((s.ends for s in subscribers), Counter())
    by_kind: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for (kind, code), n in load.outcomes.items():
        by_kind[kind] += n
        if code != "OK":
            failures[f"{kind}:{code}"] += n
    steady = samples[1:] or samples
    print()
    print(
        f"calls: {by_kind['write']:,} writes, {by_kind['read']:,} reads,"
        f" {by_kind['probe']:,} health checks; failures: {dict(failures) or 'none'}"
    )
    print(
        f"prober: {hits.total():,} probes of {sources} sources"
        f" ({dict(hits) if hits else 'no HealthService in this build'})"
    )
    if steady:
        rss = [s["rss"] for s in steady]
        fds = [s["fds"] for s in steady]
        print(
            f"server RSS MB: first {rss[0]:.1f}, last {rss[-1]:.1f}, max {max(rss):.1f};"
            f" open fds: first {fds[0]:.0f}, last {fds[-1]:.0f}, max {max(fds):.0f};"
            f" pool in use max {max(s['in_use'] for s in steady):.0f}"
            f" of {max(s['pool'] for s in steady):.0f}, waiting max"
            f" {max(s['waiting'] for s in steady):.0f}"
        )
        late = [s["rss"] for s in samples[len(samples) // 2 :]]
        print(
            f"server RSS over the second half: {min(late):.1f}-{max(late):.1f} MB"
            f" (caches such as the watch streams' 4,096 shared messages fill first)"
        )
    print(
        f"stream events: expected {expected:,}, received {received:,}, lost {lost},"
        f" duplicated {duplicated}; streams ended and resumed: {dict(ends) or 'none'}"
    )
    bad = lost or duplicated or any(code not in ALLOWED_FAILURES for _, code in failures)
    return 1 if bad else 0


def main() -> int:
    admin = admin_url()
    name = f"platform_admin_soak_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return asyncio.run(soak(make_conninfo(admin, dbname=name)))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
