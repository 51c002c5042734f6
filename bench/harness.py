"""What every benchmark needs: a PostgreSQL server, a database of its own, service processes.

bench/hot_path.py, bench/watch.py and bench/health.py import these; each benchmark module
only says what it measures. Processes are pinned to a CPU when the machine has two or more
(and ``taskset``), so a service and its baseline compete for the same resources.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import make_conninfo

from domain.ids import new_ulid
from storage.db import PoolSettings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The service's default pool size (storage's); write baselines use a pool of the same size.
POOL_MAX = PoolSettings(conninfo="").max_size
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- database -----------------------------------------------------------------------------


@contextmanager
def bench_server_url() -> Iterator[str]:
    """The PostgreSQL server to use: DATABASE_URL, else an embedded one under .data/."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    from server.ops import embedded_db

    handle, uri = embedded_db.start(ROOT / ".data", name="pg-bench")
    try:
        yield uri
    finally:
        del handle


@contextmanager
def own_database(server_url: str, name: str) -> Iterator[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    try:
        from storage.migrate import migrate

        asyncio.run(migrate(url))
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pinned_to(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PINNED and cpu is not None else []


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pids(self) -> list[int]:
        """The process's id and its children's (a ``serve`` with workers forks them)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if not children.exists():
            return [pid]
        return [pid, *(int(p) for p in children.read_text().split())]

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (workers), in MB."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024


def wait_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"server on port {port} did not become SERVING in {timeout}s")


def start_service(
    url: str,
    workdir: Path,
    *,
    workers: int = 1,
    cpu: int | None = None,
    port: int = 0,
    log_level: str = "warning",
    nats_url: str = "off",
    settings: dict[str, str] | None = None,
) -> Proc:
    port = port or free_port()
    log_path = workdir / f"serve-{port}.log"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PLATFORM_ADMIN_LISTEN": f"127.0.0.1:{port}",
        "PLATFORM_ADMIN_WORKERS": str(workers),
        "PLATFORM_ADMIN_LOG_LEVEL": log_level,
        "PLATFORM_ADMIN_AUTH": "off",
        "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "PLATFORM_ADMIN_POOL_MAX": str(POOL_MAX),
        # The RPC benches measure without the bus; make bench-relay measures the relay.
        "PLATFORM_ADMIN_NATS_URL": nats_url,
        # Its own HTTP port: the default one would be shared by every bench server.
        "PLATFORM_ADMIN_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
    }
    # Keys from the caller's environment never leak in; ``settings`` may set one (ES256Auth).
    for name in ("PLATFORM_ADMIN_JWT_SECRET", "PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE"):
        env.pop(name, None)
    env.update(settings or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*pinned_to(cpu), str(BIN / "platform-admin"), "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc = Proc(process, port, log_path)
    try:
        wait_serving(port, process)
    except RuntimeError:
        proc.stop()
        say(log_path.read_text(errors="replace")[-3000:])
        raise
    return proc


@dataclass(frozen=True)
class ES256Auth:
    """Authentication as deployed: the service verifies ES256 tokens with ``settings``'
    public key; ``token`` is a service token signed with the private one."""

    settings: dict[str, str]
    token: str

    @classmethod
    def create(cls, workdir: Path) -> ES256Auth:
        key = ec.generate_private_key(ec.SECP256R1())
        public = workdir / "bench-es256-public.pem"
        public.write_bytes(
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        now = int(time.time())
        claims = {
            "sub": new_ulid(),
            "roles": ["service"],
            "service_id": "bench",
            "aud": "platform-admin",
            "iat": now,
            "exp": now + 3 * 3600,
        }
        return cls(
            {"PLATFORM_ADMIN_AUTH": "jwt", "PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE": str(public)},
            jwt.encode(claims, key, algorithm="ES256"),
        )


def start_empty(workdir: Path, cpu: int | None = None) -> Proc:
    port = free_port()
    log_path = workdir / f"empty-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*pinned_to(cpu), sys.executable, "-m", "bench.empty_server", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "ready" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"empty server failed: {log_path.read_text()}")
        time.sleep(0.05)
    return Proc(process, port, log_path)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
