"""HealthService through a real server and a real PostgreSQL (prober off: results are pushed)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from platform_admin.v1 import health_pb2 as pb
from platform_admin.v1 import health_pb2_grpc

from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.helpers import expect_error

HEALTHY = pb.HEALTH_STATUS_HEALTHY
DEGRADED = pb.HEALTH_STATUS_DEGRADED
UNHEALTHY = pb.HEALTH_STATUS_UNHEALTHY
UNSPECIFIED = pb.HEALTH_STATUS_UNSPECIFIED
MISSING = "hsr_01JZZZZZZZZZZZZZZZZZZZZZZZ"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Damping tests push results back to back: the per-source push limit has its own test.
    return replace(settings, probe_enabled=False, record_result_min_interval_s=0)


@pytest.fixture
def hs(channel: grpc.aio.Channel) -> health_pb2_grpc.HealthServiceStub:
    return health_pb2_grpc.HealthServiceStub(channel)


def counts(sql: psycopg.Connection) -> tuple[int, int, int]:
    row = sql.execute(
        "SELECT (SELECT count(*) FROM health_sources), (SELECT count(*) FROM health_check_results),"
        " (SELECT count(*) FROM outbox WHERE subject = 'platform_admin.health.changed')"
    ).fetchone()
    assert row is not None
    return row


def events(sql: psycopg.Connection) -> list[dict]:
    rows = sql.execute(
        "SELECT payload FROM outbox WHERE subject = 'platform_admin.health.changed'"
        " ORDER BY created_at, id"
    ).fetchall()
    return [r[0] for r in rows]


def details(**values: object) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


async def create(hs, service_id="billing", url="http://127.0.0.1:8080/healthz", **extra):
    response = await hs.CreateHealthSource(
        pb.CreateHealthSourceRequest(service_id=service_id, health_url=url, **extra)
    )
    return response.source


async def record(hs, source_id, status, **values):
    return await hs.RecordCheckResult(
        pb.RecordCheckResultRequest(source_id=source_id, status=status, details=details(**values))
    )


async def test_create_applies_defaults_and_get_list_return_it(hs, sql):
    before = counts(sql)
    source = await create(hs)
    assert source.id.startswith("hsr_") and len(source.id) == 30
    assert (source.service_id, source.health_url) == ("billing", "http://127.0.0.1:8080/healthz")
    assert (source.staleness_threshold_s, source.check_interval_s) == (60, 30)
    assert (source.failure_threshold, source.success_threshold) == (2, 1)
    assert source.status == UNSPECIFIED and source.etag == "1"
    assert source.HasField("last_heartbeat_time") and not source.HasField("last_check_time")
    assert counts(sql) == (before[0] + 1, before[1], before[2] + 1)
    assert events(sql)[-1]["change"] == "CREATED"
    assert events(sql)[-1]["source"]["id"] == source.id

    got = await hs.GetHealthSource(pb.GetHealthSourceRequest(id=source.id))
    assert got.source == source
    (bare,) = sql.execute("SELECT id FROM health_sources").fetchone()
    assert source.id == f"hsr_{bare}" and len(bare) == 26

    grpc_source = await create(
        hs,
        "ledger",
        "grpc://127.0.0.1:50099/ledger.v1.Ledger",
        staleness_threshold_s=5,
        check_interval_s=1,
        failure_threshold=100,
        success_threshold=3,
    )
    assert (grpc_source.staleness_threshold_s, grpc_source.check_interval_s) == (5, 1)
    assert (grpc_source.failure_threshold, grpc_source.success_threshold) == (100, 3)


async def test_list_is_ordered_by_service_id_and_paginates(hs):
    for name in ("payments", "auth", "ledger", "billing", "search"):
        await create(hs, name)
    seen, token = [], ""
    while True:
        page = await hs.ListHealthSources(
            pb.ListHealthSourcesRequest(page_size=2, page_token=token)
        )
        assert len(page.sources) <= 2
        seen.extend(s.service_id for s in page.sources)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["auth", "billing", "ledger", "payments", "search"]


async def test_taken_service_id_is_already_exists_and_writes_nothing(hs, sql):
    await create(hs)
    before = counts(sql)
    failure = await expect_error(
        hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(service_id="billing", health_url="https://10.0.0.1/h")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "service_id" in failure.message
    assert counts(sql) == before


async def test_update_applies_the_mask_checks_the_etag_and_writes_an_event(hs, sql):
    source = await create(hs)
    updated = await hs.UpdateHealthSource(
        pb.UpdateHealthSourceRequest(
            id=source.id,
            check_interval_s=10,
            health_url="ignored://because-not-in-mask",
            update_mask=FieldMask(paths=["check_interval_s"]),
            etag=source.etag,
        )
    )
    assert updated.source.check_interval_s == 10 and updated.source.etag == "2"
    assert updated.source.health_url == source.health_url
    assert updated.source.staleness_threshold_s == 60
    assert events(sql)[-1]["change"] == "UPDATED"

    before = counts(sql)
    await expect_error(
        hs.UpdateHealthSource(
            pb.UpdateHealthSourceRequest(
                id=source.id,
                staleness_threshold_s=120,
                update_mask=FieldMask(paths=["staleness_threshold_s"]),
                etag=source.etag,
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert counts(sql) == before
    # An empty mask replaces every mutable field; zero numbers mean their defaults.
    full = await hs.UpdateHealthSource(
        pb.UpdateHealthSourceRequest(id=source.id, health_url="grpc://127.0.0.1:7000")
    )
    assert full.source.health_url == "grpc://127.0.0.1:7000"
    assert full.source.check_interval_s == 30 and full.source.etag == "3"
    assert full.source.service_id == "billing"


async def test_update_mask_rejects_unknown_and_immutable_fields(hs, sql):
    source = await create(hs)
    before = counts(sql)
    for path in ("service_id", "colour"):
        await expect_error(
            hs.UpdateHealthSource(
                pb.UpdateHealthSourceRequest(id=source.id, update_mask=FieldMask(paths=[path]))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "update_mask",
        )
    await expect_error(
        hs.UpdateHealthSource(
            pb.UpdateHealthSourceRequest(
                id=source.id,
                failure_threshold=101,
                update_mask=FieldMask(paths=["failure_threshold"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "failure_threshold",
    )
    assert counts(sql) == before


async def test_delete_removes_the_source_and_its_results_in_one_transaction(hs, sql):
    source = await create(hs)
    other = await create(hs, "ledger")
    for _ in range(3):
        await record(hs, source.id, HEALTHY)
    await record(hs, other.id, HEALTHY)
    await expect_error(
        hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=source.id, etag="7")),
        grpc.StatusCode.ABORTED,
    )
    assert counts(sql)[:2] == (2, 4)
    deleted = await hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=source.id))
    assert deleted.source.service_id == "billing"
    assert counts(sql)[:2] == (1, 1)
    assert events(sql)[-1]["change"] == "DELETED"
    await expect_error(
        hs.GetHealthSource(pb.GetHealthSourceRequest(id=source.id)), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=source.id)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_heartbeat_sets_the_time_with_one_update_and_no_event(hs, sql):
    source = await create(hs)
    sql.execute("UPDATE health_sources SET last_heartbeat_at = now() - interval '1 hour'")
    before = counts(sql)
    beat = await hs.ReportHeartbeat(pb.ReportHeartbeatRequest(service_id="billing"))
    assert beat.source.id == source.id
    age = datetime.now(UTC) - beat.source.last_heartbeat_time.ToDatetime(tzinfo=UTC)
    assert abs(age) < timedelta(seconds=5)
    assert counts(sql) == before  # no result, no outbox row
    await expect_error(
        hs.ReportHeartbeat(pb.ReportHeartbeatRequest(service_id="nobody")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        hs.ReportHeartbeat(pb.ReportHeartbeatRequest(service_id="Not Valid")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "service_id",
    )


async def test_recorded_results_are_damped_and_every_raw_result_is_kept(hs, sql):
    source = await create(hs, failure_threshold=3, success_threshold=2)
    first = await record(hs, source.id, HEALTHY, latency_ms=3)
    # success_threshold 2: one good result does not decide a new source yet.
    assert first.source.status == UNSPECIFIED
    assert first.result.id.startswith("hcr_") and first.result.details["latency_ms"] == 3
    assert (await record(hs, source.id, HEALTHY)).source.status == HEALTHY
    assert (await record(hs, source.id, UNHEALTHY)).source.status == HEALTHY
    assert (await record(hs, source.id, UNHEALTHY)).source.status == HEALTHY
    down = await record(hs, source.id, UNHEALTHY, error="refused")
    assert down.source.status == UNHEALTHY
    assert (await record(hs, source.id, HEALTHY)).source.status == UNHEALTHY
    assert (await record(hs, source.id, UNHEALTHY)).source.status == UNHEALTHY
    assert (await record(hs, source.id, DEGRADED)).source.status == UNHEALTHY
    up = await record(hs, source.id, DEGRADED, queue="slow")
    assert up.source.status == DEGRADED
    last = await record(hs, source.id, HEALTHY)
    assert last.source.status == HEALTHY
    assert counts(sql)[1] == 10
    changes = [e for e in events(sql) if e["change"] == "STATUS_CHANGED"]
    assert [(e["previous_status"], e["source"]["status"]) for e in changes] == [
        (None, "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "degraded"),
        ("degraded", "healthy"),
    ]
    got = (await hs.GetHealthSource(pb.GetHealthSourceRequest(id=source.id))).source
    assert got.etag == "1"  # status changes do not invalidate an operator's etag
    assert got.status == HEALTHY and got.status_time == last.result.check_time
    assert got.last_check_time == last.result.check_time


async def test_list_check_results_newest_first_within_a_window(hs, sql):
    source = await create(hs)
    other = await create(hs, "ledger")
    for i in range(7):
        await record(hs, source.id, HEALTHY, n=i)
    await record(hs, other.id, UNHEALTHY)
    # Spread the results over seven hours, the newest now.
    sql.execute(
        "UPDATE health_check_results r SET checked_at = now() - make_interval(hours => 6 - x.n)"
        " FROM (SELECT id, (details->>'n')::int AS n FROM health_check_results"
        "       WHERE details ? 'n') x WHERE r.id = x.id"
    )
    seen, token = [], ""
    while True:
        page = await hs.ListCheckResults(
            pb.ListCheckResultsRequest(source_id=source.id, page_size=3, page_token=token)
        )
        seen.extend(page.results)
        token = page.next_page_token
        if not token:
            break
    assert [r.details["n"] for r in seen] == [6, 5, 4, 3, 2, 1, 0]
    assert all(r.source_id == source.id for r in seen)
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(hours=4, minutes=30))
    end.FromDatetime(datetime.now(UTC) - timedelta(hours=1, minutes=30))
    window = await hs.ListCheckResults(
        pb.ListCheckResultsRequest(source_id=source.id, start_time=start, end_time=end)
    )
    assert [r.details["n"] for r in window.results] == [4, 3, 2]
    await expect_error(
        hs.ListCheckResults(
            pb.ListCheckResultsRequest(source_id=source.id, start_time=end, end_time=start)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "start_time",
    )
    page = await hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=source.id, page_size=2))
    await expect_error(
        hs.ListCheckResults(
            pb.ListCheckResultsRequest(source_id=other.id, page_token=page.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    empty = await hs.ListCheckResults(
        pb.ListCheckResultsRequest(source_id=source.id, start_time=end, end_time=end)
    )
    assert list(empty.results) == []
    await expect_error(
        hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=MISSING)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_platform_health_is_the_worst_and_stale_counts_as_unhealthy(hs, sql):
    empty = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert empty.status == HEALTHY and list(empty.sources) == []

    a = await create(hs, "alpha")
    b = await create(hs, "beta")
    await create(hs, "gamma")  # never checked: unknown, not counted
    await record(hs, a.id, HEALTHY, latency_ms=2)
    await record(hs, b.id, HEALTHY)
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert overview.status == HEALTHY
    assert [s.service_id for s in overview.sources] == ["alpha", "beta", "gamma"]
    alpha = overview.sources[0]
    assert alpha.source_id == a.id and alpha.status == HEALTHY and not alpha.stale
    assert alpha.last_details["latency_ms"] == 2 and alpha.HasField("last_check_time")
    assert overview.sources[2].status == UNSPECIFIED

    await record(hs, b.id, DEGRADED, queue_depth=900)
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert overview.status == DEGRADED
    assert overview.sources[1].last_details["queue_depth"] == 900

    # alpha is healthy by its checks but has not sent a heartbeat for longer than 60 s.
    sql.execute(
        "UPDATE health_sources SET last_heartbeat_at = now() - interval '61 seconds'"
        " WHERE service_id = 'alpha'"
    )
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    alpha = overview.sources[0]
    assert alpha.stale and alpha.status == HEALTHY and alpha.effective_status == UNHEALTHY
    assert overview.status == UNHEALTHY
    await hs.ReportHeartbeat(pb.ReportHeartbeatRequest(service_id="alpha"))
    overview = await hs.GetPlatformHealth(pb.GetPlatformHealthRequest())
    assert not overview.sources[0].stale and overview.status == DEGRADED


def _create(**fields):
    base = {"service_id": "billing", "health_url": "http://127.0.0.1:8080/h"}
    base.update(fields)
    return pb.CreateHealthSourceRequest(**base)


BAD_CREATES = [
    pytest.param(_create(service_id=""), "service_id", id="no-service-id"),
    pytest.param(_create(service_id="Billing"), "service_id", id="upper-case-service-id"),
    pytest.param(_create(service_id="9lives"), "service_id", id="service-id-digit-first"),
    pytest.param(_create(service_id="b" * 101), "service_id", id="service-id-too-long"),
    pytest.param(_create(health_url=""), "health_url", id="no-url"),
    pytest.param(_create(health_url="not a url"), "health_url", id="not-a-url"),
    pytest.param(_create(health_url="127.0.0.1:8080/h"), "health_url", id="no-scheme"),
    pytest.param(_create(health_url="ftp://127.0.0.1/h"), "health_url", id="ftp"),
    pytest.param(_create(health_url="file:///etc/passwd"), "health_url", id="file"),
    pytest.param(_create(health_url="http:///nohost"), "health_url", id="no-host"),
    pytest.param(_create(health_url="http://u:p@127.0.0.1/h"), "health_url", id="userinfo"),
    pytest.param(_create(health_url="http://127.0.0.1:99999/h"), "health_url", id="bad-port"),
    pytest.param(_create(health_url="grpc://127.0.0.1"), "health_url", id="grpc-no-port"),
    pytest.param(
        _create(health_url="http://169.254.169.254/latest/meta-data"),
        "health_url",
        id="metadata-address-not-allowed",
    ),
    pytest.param(_create(health_url="http://8.8.8.8/h"), "health_url", id="public-not-allowed"),
    pytest.param(
        _create(health_url="http://127.0.0.1/" + "a" * 2048), "health_url", id="url-too-long"
    ),
    pytest.param(_create(staleness_threshold_s=4), "staleness_threshold_s", id="staleness-low"),
    pytest.param(
        _create(staleness_threshold_s=86_401), "staleness_threshold_s", id="staleness-high"
    ),
    pytest.param(_create(staleness_threshold_s=-1), "staleness_threshold_s", id="staleness-neg"),
    pytest.param(_create(check_interval_s=3601), "check_interval_s", id="interval-high"),
    pytest.param(_create(check_interval_s=-5), "check_interval_s", id="interval-negative"),
    pytest.param(_create(failure_threshold=101), "failure_threshold", id="failures-high"),
    pytest.param(_create(success_threshold=-1), "success_threshold", id="successes-negative"),
]


@pytest.mark.parametrize(("request_", "bad_field"), BAD_CREATES)
async def test_bad_create_is_rejected_and_writes_nothing(hs, sql, request_, bad_field):
    before = counts(sql)
    await expect_error(hs.CreateHealthSource(request_), grpc.StatusCode.INVALID_ARGUMENT, bad_field)
    assert counts(sql) == before


async def test_every_bad_field_is_reported_at_once(hs):
    failure = await expect_error(
        hs.CreateHealthSource(
            pb.CreateHealthSourceRequest(
                service_id="X", health_url="gopher://h", check_interval_s=9999
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"service_id", "health_url", "check_interval_s"}


BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("01JZZZZZZZZZZZZZZZZZZZZZZZ", id="bare-ulid"),
    pytest.param("cph_01JZZZZZZZZZZZZZZZZZZZZZZZ", id="config-history-prefix"),
    pytest.param("hcr_01JZZZZZZZZZZZZZZZZZZZZZZZ", id="result-prefix"),
    pytest.param("hsr_not-a-ulid", id="malformed"),
    pytest.param("hsr_01JZZZZZZZZZZZZZZZZZZZZZZ", id="short"),
    pytest.param("hsr_81JZZZZZZZZZZZZZZZZZZZZZZZ", id="overflowing-ulid"),
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_malformed_or_foreign_ids_are_invalid_argument_everywhere(hs, sql, bad_id):
    await create(hs)
    before = counts(sql)
    calls = [
        (hs.GetHealthSource(pb.GetHealthSourceRequest(id=bad_id)), "id"),
        (hs.UpdateHealthSource(pb.UpdateHealthSourceRequest(id=bad_id)), "id"),
        (hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=bad_id)), "id"),
        (
            hs.RecordCheckResult(pb.RecordCheckResultRequest(source_id=bad_id, status=HEALTHY)),
            "source_id",
        ),
        (hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=bad_id)), "source_id"),
    ]
    for call, field in calls:
        await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field)
    assert counts(sql) == before


async def test_unknown_source_is_not_found_and_writes_nothing(hs, sql):
    before = counts(sql)
    for call in (
        hs.GetHealthSource(pb.GetHealthSourceRequest(id=MISSING)),
        hs.UpdateHealthSource(
            pb.UpdateHealthSourceRequest(id=MISSING, health_url="http://10.0.0.1")
        ),
        hs.DeleteHealthSource(pb.DeleteHealthSourceRequest(id=MISSING)),
        hs.RecordCheckResult(pb.RecordCheckResultRequest(source_id=MISSING, status=HEALTHY)),
        hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=MISSING)),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    assert counts(sql) == before


async def test_bad_results_are_rejected_and_write_nothing(hs, sql):
    source = await create(hs)
    before = counts(sql)
    await expect_error(
        hs.RecordCheckResult(pb.RecordCheckResultRequest(source_id=source.id)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "status",
    )
    await expect_error(
        hs.RecordCheckResult(pb.RecordCheckResultRequest(source_id=source.id, status=42)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "status",
    )
    big = await expect_error(
        record(hs, source.id, DEGRADED, blob="x" * (16 * 1024)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "details",
    )
    assert "16 KiB" in big.message
    await expect_error(
        record(hs, source.id, DEGRADED, nested={"ratio": float("nan")}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "details",
    )
    await expect_error(
        record(hs, source.id, DEGRADED, values=[1, float("inf")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "details",
    )
    assert counts(sql) == before
    # Just under the limit is fine.
    ok = await record(hs, source.id, DEGRADED, blob="x" * (16 * 1024 - 20))
    assert ok.result.status == DEGRADED


def test_details_that_are_not_a_json_object_cannot_be_sent():
    """details is a google.protobuf.Struct: JSON clients (grpcurl) are refused before sending."""
    from google.protobuf import json_format

    for not_an_object in ('"text"', "[1, 2]", "42", "true"):
        with pytest.raises(json_format.ParseError):
            body = f'{{"source_id": "{MISSING}", "details": {not_an_object}}}'
            json_format.Parse(body, pb.RecordCheckResultRequest())


async def test_bad_list_arguments(hs):
    source = await create(hs)
    await expect_error(
        hs.ListHealthSources(pb.ListHealthSourcesRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    )
    await expect_error(
        hs.ListHealthSources(pb.ListHealthSourcesRequest(page_token="Zm9yZ2Vk")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        hs.ListCheckResults(pb.ListCheckResultsRequest(source_id=source.id, page_token="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        hs.ListCheckResults(
            pb.ListCheckResultsRequest(source_id=source.id, start_time=Timestamp(seconds=-(10**12)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "start_time",
    )


async def test_concurrent_results_are_all_recorded_and_counted(hs, sql):
    source = await create(hs, failure_threshold=5)
    await asyncio.gather(*(record(hs, source.id, UNHEALTHY) for _ in range(12)))
    (failures, status) = sql.execute(
        "SELECT consecutive_failures, status FROM health_sources"
    ).fetchone()
    assert (failures, status) == (12, "unhealthy")
    assert counts(sql)[1] == 12
    changes = [e for e in events(sql) if e["change"] == "STATUS_CHANGED"]
    assert len(changes) == 1


async def test_registration_follows_the_configured_allow_list(db_url, settings, sql):
    from server.app import App

    narrowed = replace(settings, probe_allowed_hosts=("10.20.0.0/16", "*.svc.cluster.local"))
    app = App(narrowed, db_url, authorizer=AllowAll())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            failure = await expect_error(
                create(stub, url="http://127.0.0.1:8080/h"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "health_url",
            )
            assert "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS" in failure.message
            assert counts(sql) == (0, 0, 0)
            await create(stub, "billing", "http://10.20.3.4:8080/h")
            await create(stub, "ledger", "grpc://ledger.prod.svc.cluster.local:9090")
    finally:
        await app.stop(grace=0)


# Cloud metadata and link-local addresses, in the forms a URL can spell them.
NEVER_PROBED = [
    "http://[fd00:ec2::254]/latest/meta-data/iam/security-credentials/",  # AWS IPv6 IMDS
    "http://169.254.169.254/latest/meta-data/",  # AWS, GCP, Azure IPv4 metadata
    "http://[fd20:ce::254]/computeMetadata/v1/",  # GCP IPv6 metadata
    "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud
    "http://[fe80::1]/h",  # IPv6 link-local
    "http://[::ffff:169.254.169.254]/latest/",  # IPv4-mapped
    "http://[64:ff9b::a9fe:a9fe]/latest/",  # NAT64 of 169.254.169.254
    "grpc://169.254.170.2:80",  # ECS task metadata
    "http://0.0.0.0:8080/h",  # reaches the local host on Linux
]


@pytest.mark.parametrize(
    "allowed",
    [
        pytest.param(None, id="default-list"),
        pytest.param(("*",), id="anything"),
        pytest.param(("169.254.0.0/16", "fc00::/7", "fe80::/10", "0.0.0.0/0", "::/0"), id="listed"),
    ],
)
async def test_metadata_and_link_local_addresses_are_refused_whatever_the_list(
    db_url, settings, sql, allowed
):
    from server.app import App

    if allowed is not None:
        settings = replace(settings, probe_allowed_hosts=allowed)
    app = App(settings, db_url, authorizer=AllowAll())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            for url in NEVER_PROBED:
                failure = await expect_error(
                    create(stub, url=url), grpc.StatusCode.INVALID_ARGUMENT, "health_url"
                )
                assert "never probed" in failure.message, url
            source = await create(stub, url="http://127.0.0.1:8080/h")
            for url in NEVER_PROBED[:2]:
                await expect_error(
                    stub.UpdateHealthSource(
                        pb.UpdateHealthSourceRequest(id=source.id, health_url=url)
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "health_url",
                )
            assert counts(sql)[0] == 1
    finally:
        await app.stop(grace=0)


async def test_pushed_results_are_limited_per_source(db_url, settings, sql):
    """A service token could push results without bound (16 KiB each, kept 30 days): one per
    source per PLATFORM_ADMIN_RECORD_RESULT_MIN_INTERVAL_S, beyond that RESOURCE_EXHAUSTED."""
    from server.app import App

    interval = 0.5
    app = App(
        replace(settings, record_result_min_interval_s=interval), db_url, authorizer=AllowAll()
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            billing = await create(stub, "billing")
            ledger = await create(stub, "ledger")
            await record(stub, billing.id, HEALTHY)
            before = counts(sql)
            failure = await expect_error(
                record(stub, billing.id, UNHEALTHY, note="x" * 10_000),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            assert failure.reason == "CHECK_RESULT_RATE_LIMITED"
            assert "PLATFORM_ADMIN_RECORD_RESULT_MIN_INTERVAL_S" in failure.message
            assert "retry in" in failure.message
            assert counts(sql) == before  # nothing written, the damping counters untouched
            await record(stub, ledger.id, HEALTHY)  # another source has its own allowance
            # Concurrent pushes queue on the source's row lock: one gets through.
            await asyncio.sleep(interval + 0.05)
            outcomes = await asyncio.gather(
                *(record(stub, billing.id, HEALTHY) for _ in range(10)), return_exceptions=True
            )
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert len(refused) == 9, outcomes
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            (stored,) = sql.execute(
                "SELECT count(*) FROM health_check_results WHERE source_id = %s",
                (billing.id[4:],),
            ).fetchone()
            assert stored == 2
    finally:
        await app.stop(grace=0)
