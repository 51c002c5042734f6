"""A synchronous program (a subprocess, no asyncio in it) uses the client end to end."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
from platform_admin.v1 import flag_pb2, flag_pb2_grpc, health_pb2, health_pb2_grpc

from server.app import App
from tests.helpers import TENANT_A

PROGRAM = Path(__file__).with_name("sync_program.py")


async def test_a_plain_synchronous_program_reads_listens_and_reports_health(
    app: App, channel: grpc.aio.Channel
) -> None:
    assert "asyncio" not in PROGRAM.read_text()
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    health = health_pb2_grpc.HealthServiceStub(channel)
    await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="sync.flag", default_enabled=False))
    source = (
        await health.CreateHealthSource(
            health_pb2.CreateHealthSourceRequest(
                service_id="billing", health_url="https://10.0.0.1/health"
            )
        )
    ).source
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROGRAM),
        f"127.0.0.1:{app.port}",
        TENANT_A,
        source.id,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=PROGRAM.parent,  # not the repository root: the installed packages only
    )
    assert process.stdin is not None and process.stdout is not None

    async def step() -> dict[str, object]:
        line = await asyncio.wait_for(process.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line, "the program ended early"
        return json.loads(line)  # type: ignore[no-any-return]

    try:
        ready = await step()
        assert ready == {
            "step": "ready",
            "ready": True,
            "state": "READY",
            "on": False,
            "idle": 30,
        }
        recorded = await step()
        assert recorded == {"step": "recorded", "status": health_pb2.HEALTH_STATUS_DEGRADED}
        await flags.SetTenantOverride(
            flag_pb2.SetTenantOverrideRequest(
                key="sync.flag", tenant_id=TENANT_A, override=flag_pb2.TENANT_OVERRIDE_ENABLED
            )
        )
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        assert await step() == {"step": "changed", "got": True, "on": True, "versions": [2]}
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    beat = await health.GetHealthSource(health_pb2.GetHealthSourceRequest(id=source.id))
    assert beat.source.HasField("last_heartbeat_time")  # report_heartbeats reached the server
