"""A real ``platform-admin serve`` process and the real grpcurl binary, as an operator uses them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GRPCURL = str(BIN / "grpcurl")
PLATFORM_ADMIN = str(BIN / "platform-admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    # The HTTP listener's host:port (OFREP, the console), a free port of its own per server.
    http_address: str = ""

    def grpcurl(
        self,
        method: str,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 20,
        extra: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs grpcurl against the server; returns the completed process (text)."""
        args = [GRPCURL, "-plaintext", *(extra or [])]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        if data is not None:
            args += ["-d", json.dumps(data)]
        args += [self.address, *method.split()]  # "list", "describe X" or a method
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)

    def call(self, method: str, data: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """grpcurl that must succeed; returns the parsed JSON answer."""
        done = self.grpcurl(method, data, **kw)
        assert done.returncode == 0, f"grpcurl {method} failed: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_command(
    db_url: str, *args: str, timeout: float = 60, env_extra: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``platform-admin ARGS`` against ``db_url`` with no other PLATFORM_ADMIN_* settings
    (but ``env_extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_ADMIN_")}
    env["DATABASE_URL"] = db_url
    # Like the servers these tests start: no bus, so retention is the bus-less one.
    env["PLATFORM_ADMIN_NATS_URL"] = "off"
    env.update(env_extra or {})
    return subprocess.run(
        [PLATFORM_ADMIN, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_server(
    db_url: str, tmp_path: Path, env: Mapping[str, str] | None = None, timeout: float = 30
) -> RunningServer:
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PLATFORM_ADMIN_LISTEN": f"127.0.0.1:{port}",
        "PLATFORM_ADMIN_WORKERS": "1",
        "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        # No bus unless a test asks for one (tests/bus_helpers.py starts its own nats-server).
        "PLATFORM_ADMIN_NATS_URL": "off",
        "PLATFORM_ADMIN_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [PLATFORM_ADMIN, "serve"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(
        process, f"127.0.0.1:{port}", log_path, full_env["PLATFORM_ADMIN_HTTP_LISTEN"]
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{server.log()}")
        done = server.grpcurl("grpc.health.v1.Health/Check", timeout=5)
        if done.returncode == 0 and "SERVING" in done.stdout and "NOT_SERVING" not in done.stdout:
            return server
        time.sleep(0.2)
    stop_server(server)
    raise AssertionError(f"server did not become SERVING:\n{server.log()}")


def stop_server(server: RunningServer, timeout: float = 15) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture
def running_server(db_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(db_url, tmp_path)
    yield server
    stop_server(server)
