"""Fault 2: a server process killed with SIGKILL during 1,000 concurrent writes.

Every write the server acknowledged is durable with its history entry and outbox event;
the ones cut off either committed whole or left nothing behind.
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from platform_admin.v1 import config_pb2_grpc

from tests.faults.support import Recorder, audit_writes, set_tenant, tenants
from tests.grpcurl_server import start_server, stop_server

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

WRITES = 1000
TENANTS = 100  # 10 writes per row: row locks make them queue, so many are in flight
KILL_AFTER_ACKS = 150
DEADLINE_S = 30.0


async def test_sigkill_during_concurrent_writes_loses_no_acknowledged_write(db_url, tmp_path):
    server = start_server(db_url, tmp_path, {"PLATFORM_ADMIN_POOL_MAX": "10"})
    recorder = Recorder()
    killed = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            rows = tenants(TENANTS)

            async def write(i: int) -> None:
                tenant, value = rows[i % TENANTS], 20 + i // TENANTS  # distinct per row
                await recorder.call(
                    "write", set_tenant(stub, tenant, value, DEADLINE_S), DEADLINE_S, tenant, value
                )
                if len(recorder.acked()) >= KILL_AFTER_ACKS and not killed.is_set():
                    killed.set()
                    server.process.send_signal(signal.SIGKILL)

            async with asyncio.timeout(DEADLINE_S + 10):
                await asyncio.gather(*(write(i) for i in range(WRITES)))
    finally:
        stop_server(server)
    assert killed.is_set()
    assert server.process.returncode == -signal.SIGKILL
    codes = recorder.codes()
    print(f"outcomes {dict(codes)}")
    assert sum(codes.values()) == WRITES
    # Cut-off calls see UNAVAILABLE (connection lost), never INTERNAL or a hang.
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["UNAVAILABLE"] > 0, "the kill came after every write had finished"
    versions = audit_writes(db_url, recorder.acked())
    # Each acknowledged write set a value its row never had, so it made its own version;
    # unacknowledged ones may have committed just before the kill, but only whole
    # (audit_writes: every stored version has one history entry and one event).
    assert sum(versions.values()) >= len(recorder.acked())
