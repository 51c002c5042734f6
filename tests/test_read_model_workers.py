"""`platform-admin serve` with PLATFORM_ADMIN_WORKERS=2: two processes, one port, one truth.

A write answered by one worker process must be answered by the other within the tail
latency; SIGTERM to the parent stops both workers gracefully.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc

from tests.grpcurl_server import free_port, start_server, stop_server
from tests.helpers import TENANT_A

PWD = "global.password_min_length"
CONNECTIONS = 16


def consecutive_free_ports() -> int:
    """A port p such that p and p + 1 are both free (worker i serves metrics on p + i)."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", first))
                b.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two consecutive free ports")


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    pids = []
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"resource_tracker" not in cmdline:
            pids.append(pid)
    return pids


def resolve_calls(metrics_port: int) -> float:
    """ResolveConfig calls answered OK by the worker whose metrics listen on ``metrics_port``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("platform_admin_rpcs_total{")
            and 'ResolveConfig"' in line
            and 'code="OK"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_workers_share_the_port_converge_and_stop_on_sigterm(db_url: str, tmp_path: Path):
    metrics_port = consecutive_free_ports()
    server = start_server(
        db_url,
        tmp_path,
        env={
            "PLATFORM_ADMIN_WORKERS": "2",
            "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "PLATFORM_ADMIN_SHUTDOWN_GRACE_S": "2",
        },
    )
    try:
        pids = worker_pids(server.process.pid)
        assert len(pids) == 2, f"expected 2 workers, found {pids}"
        # The first worker to listen made the server SERVING; wait for both metrics listeners
        # (each starts right after its worker's gRPC port, in either order).
        deadline = time.monotonic() + 30
        for port in (metrics_port, metrics_port + 1):
            while True:
                try:
                    resolve_calls(port)
                    break
                except OSError:
                    assert time.monotonic() < deadline, server.log()
                    await asyncio.sleep(0.1)
        # Each connection is one TCP flow; the kernel spreads them over the two workers.
        # (a local subchannel pool: otherwise channels to one address share a connection)
        channels = [
            grpc.aio.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(CONNECTIONS)
        ]
        stubs = [config_pb2_grpc.ConfigServiceStub(c) for c in channels]
        try:
            for stub in stubs:  # every worker has loaded and answers
                answer = await stub.ResolveConfig(
                    cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A), timeout=10
                )
                assert answer.value.int_value == 12
            before = [resolve_calls(metrics_port), resolve_calls(metrics_port + 1)]
            latencies = []
            for value in (20, 21, 22, 23, 24):
                await stubs[0].SetConfig(
                    cpb.SetConfigRequest(
                        key=PWD,
                        scope=cpb.CONFIG_SCOPE_TENANT,
                        tenant_id=TENANT_A,
                        value=cpb.ConfigValue(int_value=value),
                    )
                )
                written = time.perf_counter()

                async def converged(
                    stub: config_pb2_grpc.ConfigServiceStub, want: int, written: float = written
                ) -> float:
                    while True:
                        answer = await stub.ResolveConfig(
                            cpb.ResolveConfigRequest(key=PWD, tenant_id=TENANT_A), timeout=5
                        )
                        if answer.value.int_value == want:
                            return time.perf_counter() - written
                        assert time.perf_counter() - written < 5, "a worker did not converge"
                        await asyncio.sleep(0.002)

                latencies.append(max(await asyncio.gather(*(converged(s, value) for s in stubs))))
            after = [resolve_calls(metrics_port), resolve_calls(metrics_port + 1)]
            # Both processes answered reads after the writes, and all agreed.
            assert after[0] > before[0] and after[1] > before[1], (before, after)
            latencies.sort()
            print(
                f"cross-process convergence (slowest of {CONNECTIONS} connections):"
                f" median {latencies[len(latencies) // 2] * 1000:.1f} ms,"
                f" max {latencies[-1] * 1000:.1f} ms"
            )
            assert latencies[len(latencies) // 2] < 0.5
        finally:
            for channel in channels:
                await channel.close()

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(20)
        assert code == 0, server.log()
        assert time.monotonic() - started < 15
        left = [pid for pid in pids if not _is_gone(pid)]
        assert not left, f"workers {left} still running"
        log = server.log()
        assert log.count("shutting down") == 2, log
    finally:
        stop_server(server)


def _is_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not reaped
    except OSError:
        return True


def test_several_workers_need_a_fixed_port(db_url: str, tmp_path: Path):
    import subprocess
    import sys

    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PLATFORM_ADMIN_LISTEN": "127.0.0.1:0",
        "PLATFORM_ADMIN_WORKERS": "2",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "platform-admin"), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "PLATFORM_ADMIN_WORKERS=2 needs a fixed port" in done.stderr
