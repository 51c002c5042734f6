"""Bus faults: nats-server SIGKILLed mid-burst, the relay's process SIGKILLed between
publishing and marking, PostgreSQL stopped under the relay.

Every nats-server and PostgreSQL here is the test's own (stopped by PID); a consumer that
reads the stream afterwards must see every change exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from server.app import App
from server.rpc.pipeline import AllowAll
from storage import stream
from storage.migrate import migrate
from tests.bus_helpers import (
    NatsServer,
    bus_settings,
    check_delivered_once_in_order,
    churn,
    outbox_rows,
    read_stream,
    wait_until,
)
from tests.conftest import TEST_SETTINGS, stop_or_explain
from tests.faults.support import ROOT, OwnCluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def counts(conninfo: str) -> tuple[int, int]:
    """(rows published, rows not published)."""
    with psycopg.connect(conninfo, options="-c search_path=platform_admin") as conn:
        row = conn.execute(
            "SELECT count(published_at), count(*) - count(published_at) FROM outbox"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def failures(conninfo: str) -> int:
    with psycopg.connect(conninfo, options="-c search_path=platform_admin") as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE attempt > 0").fetchone()
    assert row is not None
    return int(row[0])


def merged(*snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox rows seen in any snapshot (some were pruned in between), in seq order."""
    by_id = {row["id"]: row for snapshot in snapshots for row in snapshot}
    return sorted(by_id.values(), key=lambda row: row["seq"])


async def test_nats_killed_and_restarted_mid_burst(
    bus_app: App, db_url: str, nats_server: NatsServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bus_app.port}") as channel:
        burst = asyncio.create_task(churn(channel, 1000, tag="k"))
        assert await wait_until(lambda: counts(db_url)[0] >= 200, timeout=60)
        nats_server.kill()
        # Once a failure is on record nothing more can be marked until the bus is back.
        assert await wait_until(lambda: failures(db_url) > 0, timeout=30)
        # While the bus is down, retention removes published rows only.
        before_prune = outbox_rows(db_url)
        waiting = {row["id"] for row in before_prune if row["published_at"] is None}
        assert waiting, "the burst should outrun a dead bus"
        await stream.prune(bus_app.db, older_than=timedelta(0), published_only=True)
        after_prune = {row["id"] for row in outbox_rows(db_url)}
        assert waiting <= after_prune, "an unpublished row was pruned"
        pruned = {row["id"] for row in before_prune} - after_prune
        assert pruned, "published rows are pruned as before"
        nats_server.start()
        assert await burst == 1000
    assert await wait_until(lambda: counts(db_url)[1] == 0, timeout=120), counts(db_url)
    final = outbox_rows(db_url)
    rows = merged(before_prune, final)
    assert len(rows) == 1000
    # The failures are on record: the rows at the head while the bus was down.
    failed = [row for row in final if row["attempt"] > 0]
    assert failed and all(row["last_error"] for row in failed)
    assert all(len(row["last_error"]) <= 500 for row in failed)
    received = await read_stream(nats_server.url, expect=1000, timeout=90)
    check_delivered_once_in_order(received, rows)


def start_victim(db_url: str, nats_url: str, report: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.relay_victim",
                db_url,
                nats_url,
                str(report),
                "200",
            ],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_relay_killed_between_publish_and_mark_second_replica_takes_over(
    db_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    report = tmp_path / "victim.json"
    victim = start_victim(db_url, nats_server.url, report, tmp_path / "victim.log")
    replica: App | None = None
    try:
        assert await wait_until(
            lambda: Path(f"{report}.leader").exists() or victim.poll() is not None, timeout=60
        )
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()
        settings = bus_settings(replace(TEST_SETTINGS, probe_enabled=False), nats_server.url)
        replica = App(settings, db_url, authorizer=AllowAll())
        await replica.start()
        assert replica.bus is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            burst = asyncio.create_task(churn(channel, 600, tag="v"))
            assert await wait_until(lambda: victim.poll() is not None, timeout=120)
            died_at = time.monotonic()
            assert victim.returncode == -9
            unmarked = json.loads(report.read_text())
            assert unmarked, "the victim died holding published, unmarked rows"
            assert await wait_until(lambda: replica.bus.relay.leader, timeout=10)
            takeover_s = time.monotonic() - died_at
            assert await burst == 600
        assert await wait_until(lambda: counts(db_url)[1] == 0, timeout=120), counts(db_url)
        rows = outbox_rows(db_url)
        assert len(rows) == 600
        received = await read_stream(nats_server.url, expect=600, timeout=90)
        check_delivered_once_in_order(received, rows)
        assert set(unmarked) <= {r.headers["Nats-Msg-Id"] for r in received}
        print(f"takeover after SIGKILL: {takeover_s:.2f}s; {len(unmarked)} rows unmarked")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        if replica is not None:
            await stop_or_explain(replica)


@pytest.fixture
def cluster() -> Iterator[OwnCluster]:
    # Not tmp_path: the cluster may run as its own system user (see test_database_outage).
    path = Path(tempfile.mkdtemp(prefix="platform-admin-bus-faults-"))
    path.chmod(0o755)
    own = OwnCluster(path)
    try:
        yield own
    finally:
        own.close()
        shutil.rmtree(path, ignore_errors=True)


async def test_relay_resumes_by_itself_after_postgres_restarts(
    cluster: OwnCluster, nats_server: NatsServer
) -> None:
    await migrate(cluster.conninfo)
    settings = bus_settings(
        replace(TEST_SETTINGS, probe_enabled=False, pool_acquire_timeout_s=2.0), nats_server.url
    )
    app = App(settings, cluster.conninfo, health_interval_s=0.2, authorizer=AllowAll())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            assert await churn(channel, 100, tag="p") == 100
            assert await wait_until(lambda: counts(cluster.conninfo)[1] == 0, timeout=60)
            cluster.stop("fast")
            await asyncio.sleep(2.0)
            cluster.start()
            written = 0
            for attempt in range(30):
                written += await churn(channel, 100 - written, tag=f"q{attempt}-")
                if written == 100:
                    break
                await asyncio.sleep(0.5)
            assert written == 100
        assert await wait_until(lambda: counts(cluster.conninfo)[1] == 0, timeout=60)
        rows = outbox_rows(cluster.conninfo)
        assert len(rows) == 200
        received = await read_stream(nats_server.url, expect=200, timeout=60)
        check_delivered_once_in_order(received, rows)
    finally:
        await stop_or_explain(app)
