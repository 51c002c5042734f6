"""The prober against real HTTP and gRPC servers on loopback, through real Apps and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import psycopg
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from platform_admin.v1 import health_pb2 as pb
from platform_admin.v1 import health_pb2_grpc as pb_grpc

from domain.health import AllowList, Status
from server.app import App, pool_settings
from server.ops.prober import AllowListResolver, HttpProbe, NotAllowed, ProberConfig, probe
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from storage.db import Database
from storage.health import claim_due

LOOPBACK = AllowList.parse("127.0.0.0/8")


@dataclass
class HttpServer:
    """A real aiohttp server whose answers the tests choose; it counts every request."""

    port: int = 0
    host: str = "127.0.0.1"
    hits: Counter[str] = field(default_factory=Counter)
    mode: str = "ok"  # what /switch answers
    streamed: int = 0  # bytes of /huge actually written

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


async def _start_http(server: HttpServer, other: HttpServer | None = None) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        server.hits[path] += 1
        if path == "/switch":
            path = "/" + server.mode
        if path.startswith("/s/"):  # one path per source: /s/<n>
            path = "/ok"
        if path == "/ok":
            return web.Response(text="ok")
        if path == "/json-ok":
            return web.json_response({"status": "ok", "version": "1.2"})
        if path == "/degraded":
            return web.json_response({"status": "degraded", "reason": "replica lag 40s"})
        if path == "/fail":
            return web.Response(status=500, text="boom")
        if path == "/missing":
            return web.Response(status=404)
        if path == "/slow":
            await asyncio.sleep(2)
            return web.Response(text="late")
        if path == "/redirect-same":
            raise web.HTTPFound("/degraded")
        if path == "/redirect-away":
            assert other is not None
            raise web.HTTPFound(other.url("/ok"))
        if path == "/redirect-bad":
            return web.Response(status=302, headers={"Location": "http://[not-a-host"})
        if path == "/redirect-loop":
            raise web.HTTPFound("/redirect-loop")
        if path == "/huge":
            # An endless healthy body: only a reader that stops early finishes in time.
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"x" * 65536
            for _ in range(2_000):  # bounded anyway: at most 128 MiB
                await response.write(chunk)
                server.streamed += len(chunk)
            return response
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.host, 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner


@pytest.fixture
async def away() -> AsyncIterator[HttpServer]:
    """Another host (127.0.0.2): a redirect there must never reach it."""
    server = HttpServer(host="127.0.0.2")
    runner = await _start_http(server)
    yield server
    await runner.cleanup()


@pytest.fixture
async def http(away: HttpServer) -> AsyncIterator[HttpServer]:
    server = HttpServer()
    runner = await _start_http(server, other=away)
    yield server
    await runner.cleanup()


class SlowHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        await asyncio.sleep(2)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def grpc_health() -> AsyncIterator[int]:
    """A real grpc.health.v1 server: "" SERVING, svc.down NOT_SERVING, svc.unknown UNKNOWN."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    status = health_pb2.HealthCheckResponse
    await servicer.set("", status.SERVING)
    await servicer.set("svc.down", status.NOT_SERVING)
    await servicer.set("svc.unknown", status.UNKNOWN)
    yield port
    await server.stop(0)


@pytest.fixture
async def slow_grpc() -> AsyncIterator[int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(SlowHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(0)


def _closed_port() -> int:
    """A loopback port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def check() -> AsyncIterator[Callable[..., Awaitable[tuple[Status, dict[str, Any]]]]]:
    sessions: list[HttpProbe] = []

    async def run(url: str, allow: AllowList = LOOPBACK, timeout_s: float = 1.0) -> Any:
        config = ProberConfig(allow_list=allow, timeout_s=timeout_s)
        session = HttpProbe(config)
        sessions.append(session)
        return await probe(session, config, url)

    yield run
    for session in sessions:
        await session.close()


# --- mapping of what a check sees ---------------------------------------------------------


async def test_http_2xx_is_healthy_with_latency_and_status(check, http):
    status, details = await check(http.url("/ok"))
    assert status is Status.HEALTHY
    assert details["probe"] == "http" and details["http_status"] == 200
    assert 0 <= details["latency_ms"] < 1000 and "error" not in details
    status, _ = await check(http.url("/json-ok"))
    assert status is Status.HEALTHY


async def test_http_json_body_saying_degraded_is_degraded_with_the_body(check, http):
    status, details = await check(http.url("/degraded"))
    assert status is Status.DEGRADED
    assert details["body"] == {"status": "degraded", "reason": "replica lag 40s"}


async def test_http_500_and_404_are_unhealthy(check, http):
    status, details = await check(http.url("/fail"))
    assert status is Status.UNHEALTHY and details["http_status"] == 500
    assert "500" in details["error"]
    status, details = await check(http.url("/missing"))
    assert status is Status.UNHEALTHY and details["http_status"] == 404


async def test_http_slower_than_the_timeout_is_unhealthy_in_time(check, http):
    started = time.monotonic()
    status, details = await check(http.url("/slow"), timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert status is Status.UNHEALTHY and "timed out after 0.3 s" in details["error"]
    assert http.hits["/slow"] == 1


async def test_refused_connection_is_unhealthy(check):
    status, details = await check(f"http://127.0.0.1:{_closed_port()}/h")
    assert status is Status.UNHEALTHY and "cannot connect" in details["error"]
    status, details = await check(f"grpc://127.0.0.1:{_closed_port()}")
    assert status is Status.UNHEALTHY and details["grpc_status"] == "UNAVAILABLE"


async def test_redirects_are_followed_on_the_same_host_only(check, http, away):
    status, details = await check(http.url("/redirect-same"))
    assert status is Status.DEGRADED and http.hits["/degraded"] == 1
    status, details = await check(http.url("/redirect-away"))
    assert status is Status.UNHEALTHY and details["http_status"] == 302
    assert "redirect to another host refused: 127.0.0.2" in details["error"]
    assert away.hits == Counter()  # never contacted
    status, details = await check(http.url("/redirect-bad"))
    assert status is Status.UNHEALTHY and details["error"]
    status, details = await check(http.url("/redirect-loop"))
    assert status is Status.UNHEALTHY and "redirects" in details["error"]
    assert http.hits["/redirect-loop"] == 6


async def test_huge_body_is_read_only_up_to_64_kib(check, http):
    started = time.monotonic()
    status, details = await check(http.url("/huge"), timeout_s=3.0)
    assert status is Status.HEALTHY and details["body_truncated"] is True
    assert time.monotonic() - started < 2
    await asyncio.sleep(0.2)
    # The server stopped being able to write long before its 128 MiB: we hung up.
    assert http.streamed < 16 * 1024 * 1024


async def test_grpc_health_statuses(check, grpc_health):
    base = f"grpc://127.0.0.1:{grpc_health}"
    status, details = await check(base)
    assert (status, details["grpc_status"], details["probe"]) == (Status.HEALTHY, "SERVING", "grpc")
    status, details = await check(f"{base}/svc.down")
    assert (status, details["grpc_status"]) == (Status.UNHEALTHY, "NOT_SERVING")
    status, details = await check(f"{base}/svc.unknown")
    assert (status, details["grpc_status"]) == (Status.DEGRADED, "UNKNOWN")
    status, details = await check(f"{base}/svc.never.registered")
    assert (status, details["grpc_status"]) == (Status.DEGRADED, "SERVICE_UNKNOWN")


async def test_grpc_slower_than_the_timeout_is_unhealthy(check, slow_grpc):
    started = time.monotonic()
    status, details = await check(f"grpc://127.0.0.1:{slow_grpc}", timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert status is Status.UNHEALTHY and "timed out" in details["error"]


async def test_hosts_outside_the_allow_list_are_never_contacted(check, http, grpc_health):
    only_ten = AllowList.parse("10.0.0.0/8")
    for url in (http.url("/ok"), f"http://localhost:{http.port}/ok"):
        status, details = await check(url, allow=only_ten)
        assert status is Status.UNHEALTHY and "not allowed for probing" in details["error"]
    status, details = await check(f"grpc://localhost:{grpc_health}", allow=only_ten)
    assert status is Status.UNHEALTHY and "not allowed for probing" in details["error"]
    assert http.hits == Counter()
    # Listed by name: allowed whatever it resolves to, the always-denied ranges excepted.
    status, _ = await check(f"http://localhost:{http.port}/ok", allow=AllowList.parse("localhost"))
    assert status is Status.HEALTHY


# --- the prober inside the server ---------------------------------------------------------

FAST = {"probe_poll_s": 0.05, "probe_timeout_s": 0.5}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, **FAST)


@pytest.fixture
def hs(channel: grpc.aio.Channel) -> pb_grpc.HealthServiceStub:
    return pb_grpc.HealthServiceStub(channel)


async def _wait_results(sql: psycopg.Connection, source_id: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (have,) = sql.execute(
            "SELECT count(*) FROM health_check_results WHERE source_id = %s", (source_id[4:],)
        ).fetchone()
        if have >= count:
            assert have == count, f"{have} results, expected {count}"
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} results after 10 s")


def _due_now(sql: psycopg.Connection) -> None:
    """Makes the next check due at once, so the test does not wait a whole interval."""
    sql.execute("UPDATE health_sources SET next_check_at = now()")


async def test_prober_records_every_result_and_damps_the_status(app: App, hs, sql, http):
    source = (
        await hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(
                service_id="billing",
                health_url=http.url("/switch"),
                check_interval_s=3600,
                failure_threshold=2,
                success_threshold=2,
            )
        )
    ).source

    async def step(count: int, expected: int) -> pb.HealthSource:
        await _wait_results(sql, source.id, count)
        got = (await hs.GetHealthSource(pb.GetHealthSourceRequest(id=source.id))).source
        assert got.status == expected, f"after {count} results"
        return got

    await step(1, pb.HEALTH_STATUS_UNSPECIFIED)  # one good result of two needed
    _due_now(sql)
    await step(2, pb.HEALTH_STATUS_HEALTHY)
    http.mode = "fail"
    _due_now(sql)
    await step(3, pb.HEALTH_STATUS_HEALTHY)  # one failure is a blip
    _due_now(sql)
    down = await step(4, pb.HEALTH_STATUS_UNHEALTHY)
    http.mode = "degraded"
    _due_now(sql)
    await step(5, pb.HEALTH_STATUS_UNHEALTHY)
    _due_now(sql)
    await step(6, pb.HEALTH_STATUS_DEGRADED)

    results = (await hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=source.id))).results
    raw = [r.status for r in reversed(results)]
    H, D, U = pb.HEALTH_STATUS_HEALTHY, pb.HEALTH_STATUS_DEGRADED, pb.HEALTH_STATUS_UNHEALTHY
    assert raw == [H, H, U, U, D, D]
    assert results[2].details["http_status"] == 500 and "latency_ms" in results[2].details
    assert results[0].details["body"]["reason"] == "replica lag 40s"
    assert down.status_time == results[2].check_time
    changes = sql.execute(
        "SELECT payload->>'previous_status', payload->'source'->>'status' FROM outbox"
        " WHERE payload->>'change' = 'STATUS_CHANGED' ORDER BY created_at"
    ).fetchall()
    assert changes == [(None, "healthy"), ("healthy", "unhealthy"), ("unhealthy", "degraded")]
    assert http.hits["/switch"] == 6

    # Probed healthy, but the service stopped sending heartbeats: stale counts as unhealthy.
    sql.execute("UPDATE health_sources SET last_heartbeat_at = now() - interval '2 minutes'")
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert overview.sources[0].stale and overview.status == pb.HEALTH_STATUS_UNHEALTHY


async def test_prober_checks_grpc_sources(app: App, hs, sql, grpc_health):
    source = (
        await hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(
                service_id="ledger",
                health_url=f"grpc://127.0.0.1:{grpc_health}/svc.down",
                check_interval_s=3600,
                failure_threshold=1,
            )
        )
    ).source
    await _wait_results(sql, source.id, 1)
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert overview.status == pb.HEALTH_STATUS_UNHEALTHY
    assert overview.sources[0].last_details["grpc_status"] == "NOT_SERVING"


async def test_deleting_a_source_stops_its_checks(app: App, hs, sql, http):
    source = (
        await hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(
                service_id="billing", health_url=http.url("/ok"), check_interval_s=1
            )
        )
    ).source
    await _wait_results(sql, source.id, 1)
    await hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=source.id))
    hits = http.hits["/ok"]
    await asyncio.sleep(1.5)
    assert http.hits["/ok"] == hits
    assert sql.execute("SELECT count(*) FROM health_check_results").fetchone() == (0,)


async def test_two_replicas_check_each_source_once_per_interval(db_url, settings, sql, http):
    replicas = [App(replace(settings), db_url, authorizer=AllowAll()) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as channel:
            hs = pb_grpc.HealthServiceStub(channel)
            for n in range(6):
                await hs.CreateHealthSource(
                    pb.CreateHealthSourceRequest(
                        service_id=f"svc-{n}", health_url=http.url(f"/s/{n}"), check_interval_s=1
                    )
                )
            started = time.monotonic()
            await asyncio.sleep(3.4)
            elapsed = time.monotonic() - started
    finally:
        for replica in replicas:
            await replica.stop(grace=0)
    rows = sql.execute(
        "SELECT s.service_id, array_agg(extract(epoch FROM r.checked_at) ORDER BY r.checked_at)"
        "  FROM health_sources s JOIN health_check_results r ON r.source_id = s.id"
        " GROUP BY s.service_id ORDER BY s.service_id"
    ).fetchall()
    assert len(rows) == 6
    most = int(elapsed) + 1  # at t = 0, 1, 2, 3
    for service_id, times in rows:
        n = service_id.split("-")[1]
        assert 3 <= len(times) <= most, (service_id, times)
        gaps = [float(b - a) for a, b in itertools.pairwise(times)]
        assert min(gaps) > 0.8, (service_id, gaps)  # never twice in one interval
        assert http.hits[f"/s/{n}"] == len(times)  # each recorded check was made once


async def test_concurrent_claims_never_hand_out_a_source_twice(db_url, settings, sql):
    sql.execute(
        "INSERT INTO health_sources (id, service_id, health_url, next_check_at)"
        " SELECT '0' || upper(lpad(to_hex(g), 25, '0')), 'svc-' || g, 'http://127.0.0.1:1/h',"
        "        now() - interval '1 minute'"
        "   FROM generate_series(1, 300) AS g"
    )
    db = Database(pool_settings(replace(settings, pool_min=6, pool_max=6), db_url))
    await db.open()
    try:
        batches = await asyncio.gather(*(claim_due(db, 100) for _ in range(6)))
        again = await claim_due(db, 1000)
    finally:
        await db.close()
    claimed = [c.id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 300
    assert again == []  # every one moved an interval ahead


# "0" and "0.0.0.0" connect to the local host; "2852039166" is 169.254.169.254 in decimal.
# "0" and "2852039166" are host *names* to the URL parser, so only the resolved address tells
# what they are (aiohttp refuses "0" in an http URL by itself; grpc:// resolves it).
async def test_always_denied_addresses_are_refused_after_resolution(check, http, grpc_health):
    anything = AllowList.parse("*")
    for url in (
        f"http://0.0.0.0:{http.port}/ok",
        f"grpc://0:{grpc_health}",
        f"grpc://0.0.0.0:{grpc_health}",
    ):
        for allow in (anything, AllowList.parse("0,0.0.0.0/8,127.0.0.0/8")):
            status, details = await check(url, allow=allow)
            assert status is Status.UNHEALTHY, url
            assert "never probed" in details["error"], (url, details)
    assert http.hits == Counter()
    resolver = AllowListResolver(anything)
    try:
        with pytest.raises(NotAllowed, match="never probed"):
            await resolver.resolve("2852039166", 80)  # answered locally, nothing is sent
    finally:
        await resolver.close()
    # Loopback stays reachable through the same list.
    status, _ = await check(http.url("/ok"), allow=anything)
    assert status is Status.HEALTHY
