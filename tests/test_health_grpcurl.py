"""HealthService as an operator drives it: the real grpcurl against a real server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.grpcurl_server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.grpcurl
S = "platform_admin.v1.HealthService"


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(db_url, tmp_path, env={"PLATFORM_ADMIN_PROBE_POLL_S": "0.1"})
    yield running
    stop_server(running)


@pytest.fixture
def ledger() -> Iterator[int]:
    """A real grpc.health.v1 server (threads) for the server process's prober to check."""
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    servicer.set("ledger.v1.Ledger", health_pb2.HealthCheckResponse.SERVING)
    yield port
    grpc_server.stop(0)


def test_every_rpc_through_grpcurl(server: RunningServer, ledger: int) -> None:
    assert S in server.grpcurl("list").stdout.split()
    created = server.call(
        f"{S}/CreateHealthSource",
        {
            "service_id": "ledger",
            "health_url": f"grpc://127.0.0.1:{ledger}/ledger.v1.Ledger",
            "check_interval_s": 1,
        },
    )["source"]
    source_id = created["id"]
    assert source_id.startswith("hsr_") and created["etag"] == "1"
    assert server.call(f"{S}/GetHealthSource", {"id": source_id})["source"]["service_id"] == (
        "ledger"
    )
    listed = server.call(f"{S}/ListHealthSources", {"page_size": 10})
    assert [s["id"] for s in listed["sources"]] == [source_id]
    updated = server.call(
        f"{S}/UpdateHealthSource",
        {
            "id": source_id,
            "staleness_threshold_s": 120,
            "update_mask": {"paths": ["staleness_threshold_s"]},
            "etag": "1",
        },
    )["source"]
    assert updated["staleness_threshold_s"] == 120 and updated["etag"] == "2"
    beat = server.call(f"{S}/ReportHeartbeat", {"service_id": "ledger"})
    assert beat["source"]["last_heartbeat_time"]

    # The server's prober checks the gRPC health endpoint within about a second.
    deadline = time.monotonic() + 10
    results: list = []
    while time.monotonic() < deadline and not results:
        results = server.call(f"{S}/ListCheckResults", {"source_id": source_id}).get("results", [])
        time.sleep(0.2)
    assert results, server.log()[-2000:]
    assert results[0]["status"] == "HEALTH_STATUS_HEALTHY"
    assert results[0]["details"]["grpc_status"] == "SERVING"

    pushed = server.call(
        f"{S}/RecordCheckResult",
        {
            "source_id": source_id,
            "status": "HEALTH_STATUS_DEGRADED",
            "details": {"reason": "replica lag", "lag_s": 40},
        },
    )
    assert pushed["result"]["id"].startswith("hcr_")
    assert pushed["source"]["status"] == "HEALTH_STATUS_DEGRADED"
    overview = server.call(f"{S}/GetPlatformHealth")
    assert overview["status"] in ("HEALTH_STATUS_DEGRADED", "HEALTH_STATUS_HEALTHY")
    assert overview["sources"][0]["service_id"] == "ledger"
    deleted = server.call(f"{S}/DeleteHealthSource", {"id": source_id})
    assert deleted["source"]["id"] == source_id
    assert server.call(f"{S}/ListHealthSources").get("sources", []) == []


def test_bad_input_reads_clearly_in_grpcurl(server: RunningServer) -> None:
    done = server.grpcurl(
        f"{S}/CreateHealthSource", {"service_id": "billing", "health_url": "ftp://10.0.0.1/x"}
    )
    assert done.returncode != 0 and "InvalidArgument" in done.stderr
    assert "health_url: scheme 'ftp' is not allowed" in done.stderr
    wrong = server.grpcurl(f"{S}/GetHealthSource", {"id": "cph_01JZZZZZZZZZZZZZZZZZZZZZZZ"})
    assert "id: must be an id starting with 'hsr_'" in wrong.stderr
