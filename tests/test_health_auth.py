"""HealthService with authentication on: a service reports only for its own service_id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import psycopg
import pytest
from platform_admin.v1 import health_pb2 as pb
from platform_admin.v1 import health_pb2_grpc

from server.app import App
from server.security.auth import JwtAuthorizer, TokenVerifier, VerificationKey, mint
from server.settings import Settings
from tests.helpers import expect_error

SECRET = "health-test-secret-of-at-least-32-bytes!"
AUDIENCE = "platform-admin"


def token(roles: list[str], service_id: str | None = None) -> tuple[tuple[str, str]]:
    signed = mint(
        SECRET,
        sub="01JAD000000000000000000SVC",
        roles=roles,
        audience=AUDIENCE,
        ttl_s=600,
        service_id=service_id,
    )
    return (("authorization", f"Bearer {signed}"),)


ADMIN = token(["platform_admin"])
READER = token(["platform_reader"])
BILLING = token(["service"], "billing")
LEDGER = token(["service"], "ledger")
ADMIN_SERVICE = token(["service", "platform_admin"], "ledger")


@pytest.fixture
async def hs(db_url: str, settings: Settings) -> AsyncIterator[health_pb2_grpc.HealthServiceStub]:
    verifier = TokenVerifier(VerificationKey("HS256", SECRET), AUDIENCE)
    # Pushes back to back for several callers: the per-source limit has its own test.
    quiet = replace(settings, probe_enabled=False, record_result_min_interval_s=0)
    app = App(quiet, db_url, authorizer=JwtAuthorizer(verifier))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield health_pb2_grpc.HealthServiceStub(channel)
    finally:
        await app.stop(grace=0)


def written(sql: psycopg.Connection) -> tuple[int, int]:
    row = sql.execute(
        "SELECT (SELECT count(*) FROM health_check_results), (SELECT count(*) FROM outbox)"
    ).fetchone()
    assert row is not None
    return row


async def test_a_service_reports_only_for_itself(hs, sql):
    billing = (
        await hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(service_id="billing", health_url="http://10.0.0.5/h"),
            metadata=ADMIN,
        )
    ).source
    await hs.CreateHealthSource(
        pb.CreateHealthSourceRequest(service_id="ledger", health_url="http://10.0.0.6/h"),
        metadata=ADMIN,
    )
    sql.execute("UPDATE health_sources SET last_heartbeat_at = now() - interval '1 hour'")

    beat = await hs.ReportHeartbeat(
        pb.ReportHeartbeatRequest(service_id="billing"), metadata=BILLING
    )
    assert beat.source.service_id == "billing"
    own = await hs.ReportHeartbeat(pb.ReportHeartbeatRequest(), metadata=BILLING)  # empty: itself
    assert own.source.id == billing.id
    result = await hs.RecordCheckResult(
        pb.RecordCheckResultRequest(source_id=billing.id, status=pb.HEALTH_STATUS_HEALTHY),
        metadata=BILLING,
    )
    assert result.source.status == pb.HEALTH_STATUS_HEALTHY

    before = written(sql)
    await expect_error(
        hs.ReportHeartbeat(pb.ReportHeartbeatRequest(service_id="billing"), metadata=LEDGER),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        hs.RecordCheckResult(
            pb.RecordCheckResultRequest(source_id=billing.id, status=pb.HEALTH_STATUS_UNHEALTHY),
            metadata=LEDGER,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert written(sql) == before
    (stale,) = sql.execute(
        "SELECT last_heartbeat_at < now() - interval '30 minutes' FROM health_sources"
        " WHERE service_id = 'ledger'"
    ).fetchone()
    assert stale  # the refused heartbeat did not touch it

    # A platform admin (even one that is also a service) may report for anyone.
    await hs.ReportHeartbeat(
        pb.ReportHeartbeatRequest(service_id="billing"), metadata=ADMIN_SERVICE
    )
    await hs.RecordCheckResult(
        pb.RecordCheckResultRequest(source_id=billing.id, status=pb.HEALTH_STATUS_DEGRADED),
        metadata=ADMIN,
    )


async def test_roles_of_the_policy_table_apply(hs):
    await expect_error(
        hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(service_id="billing", health_url="http://10.0.0.5/h"),
            metadata=BILLING,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(service_id="billing", health_url="http://10.0.0.5/h"),
            metadata=READER,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest(), metadata=READER)
    assert overview.status == pb.HEALTH_STATUS_HEALTHY
    await expect_error(
        hs.GetPlatformHealth(pb.GetPlatformHealthRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
