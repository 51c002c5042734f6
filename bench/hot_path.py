"""`make bench`: hot-path throughput and latency, each figure beside a same-run baseline.

What it does (a few minutes in all):

1. Uses its own database, on DATABASE_URL's server or on an embedded PostgreSQL under
   ``.data/pg-bench``; migrates it and seeds 1,000 flags with tenant lists and the config
   keys with tenant and node overrides.
2. Reads (EvaluateFlag, EvaluateFlags, ResolveConfig, ResolveConfigs): h2load drives gRPC
   over h2c with a framed request body against ``platform-admin serve`` (one worker) and,
   right after, against bench/empty_server.py (empty handlers on an identical grpc.aio
   server). Both servers are pinned to CPU 0 and h2load to CPU 1 when the machine has two
   or more CPUs, so the two measurements compete for the same resources. Every read cell
   runs with authentication off and on (a second service verifying ES256 service tokens,
   as deployed: rows marked "auth on"), and EvaluateFlag / ResolveConfig at the highest
   concurrency also through a grpc.aio client (bench/loadgen.py), how services call it.
3. Writes (SetConfig, SetTenantOverride): a grpc.aio client sends pre-serialized requests,
   each changing a value, and the baseline issues the same SQL transaction straight
   through psycopg with a pool of the same size, at the same concurrency.
4. Two workers against one (read throughput at concurrency 64, unpinned), cold start and
   resident memory with 10,000 flags, and the propagation latency of a write from one
   server process to another.

Ratios are the result: this machine is shared and noisy, absolute figures are not.
Each cell alternates the service and its baseline BENCH_ROUNDS times (default 3) for
BENCH_SECONDS each (default 1) and reports each side's median round. DATABASE_URL picks
the PostgreSQL server (a database of its own is created and dropped).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from platform_admin.v1 import config_pb2, flag_pb2
from psycopg.types.json import Jsonb

from bench import loadgen
from bench.harness import (
    PINNED,
    POOL_MAX,
    ROOT,
    ES256Auth,
    bench_server_url,
    cpu_seconds,
    free_port,
    own_database,
    pinned_to,
    say,
    start_empty,
    start_service,
)
from domain import config_keys
from domain.ids import new_ulid

SECONDS = float(os.environ.get("BENCH_SECONDS", "1"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARM_UP = 0.5
CONCURRENCY = (1, 16, 64)
N_FLAGS = 1_000
N_COLD_FLAGS = 10_000
N_TENANTS = 500
N_NODES = 20
CONFIG = "/platform_admin.v1.ConfigService/"
FLAG = "/platform_admin.v1.FlagService/"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    failed: int = 0
    # Server CPU time per call (user + system, whole process), when measured: far steadier
    # than RPC/s on a shared machine, since other load changes the rate more than the cost.
    cpu_us: float | None = None


def tenant_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return ["01J" + "".join(rng.choice(alphabet) for _ in range(23)) for _ in range(n)]


TENANTS = tenant_ids(N_TENANTS)
NODES = [f"node-{i:02d}" for i in range(N_NODES)]


def flag_key(i: int) -> str:
    return f"bench.flag_{i:05d}"


def archived(i: int) -> bool:
    return i % 50 == 49  # one flag in fifty is archived


def seed(url: str, n_flags: int) -> None:
    """Flags with tenant lists, TENANT overrides of every tenant-scoped key, NODE overrides."""
    rng = random.Random(n_flags)
    flags = []
    for i in range(n_flags):
        chosen = rng.sample(TENANTS, 30)
        flags.append(
            (
                flag_key(i),
                f"bench flag {i}",
                i % 3 == 0,
                sorted(chosen[:20]),
                sorted(chosen[20:]),
                archived(i),
            )
        )
    configs = []
    for spec in config_keys.ALLOW_LIST.values():
        for scope, owners in (
            (config_keys.Scope.TENANT, TENANTS[: N_TENANTS // 2]),
            (config_keys.Scope.NODE, NODES),
        ):
            if scope not in spec.scopes:
                continue
            for owner in owners:
                value = spec.default if not isinstance(spec.default, int) else spec.min_value or 1
                if isinstance(spec.default, bool):
                    value = not spec.default
                configs.append(
                    (
                        spec.key,
                        scope.value,
                        owner if scope is config_keys.Scope.TENANT else None,
                        owner if scope is config_keys.Scope.NODE else None,
                        config_keys.serialize(value),
                    )
                )
    with psycopg.connect(url, options="-c search_path=platform_admin") as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY feature_flags (key, description, default_enabled, enabled_tenant_ids,"
                " disabled_tenant_ids, is_archived) FROM STDIN"
            ) as copy:
                for row in flags:
                    copy.write_row(row)
            with cur.copy(
                "COPY platform_configs (key, scope, tenant_id, node_id, value) FROM STDIN"
            ) as copy:
                for row in configs:
                    copy.write_row(row)
        conn.commit()


# --- reads through h2load -----------------------------------------------------------------


def frame(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def call_once(port: int, path: str, request: Any, response_type: Any) -> Any:
    """One call through a real client: the body h2load sends must succeed and be right."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return method(request, timeout=10)


def h2load(
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    workdir: Path,
    pin: bool = True,
    pid: int | None = None,
    token: str = "",
) -> Result:
    clients = min(concurrency, 16)
    streams = max(1, concurrency // clients)
    body_file = workdir / "body.bin"
    body_file.write_bytes(body)
    log_file = workdir / "h2load.log"
    log_file.unlink(missing_ok=True)
    args = [
        *pinned_to(1 if pin else None),
        "h2load",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-D",
        f"{int(SECONDS * 1000)}ms",
        f"--warm-up-time={int(WARM_UP * 1000)}ms",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        *(["-H", f"authorization: Bearer {token}"] if token else []),
        "-d",
        str(body_file),
        "--log-file",
        str(log_file),
        f"http://127.0.0.1:{port}{path}",
    ]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    done = subprocess.run(args, capture_output=True, text=True, timeout=SECONDS + 60, check=False)
    cpu = cpu_seconds(pid) - cpu_before if pid else None
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stdout}\n{done.stderr}")
    latencies = []
    failed = 0
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        if parts[1] != "200":
            failed += 1
        latencies.append(int(parts[2]) / 1000)
    for line in done.stdout.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split("req/s")[0].strip())
            break
    else:
        raise RuntimeError(f"unexpected h2load output: {done.stdout}")
    result = _result(rps, latencies, failed)
    if cpu is not None and rps:
        # Warm-up calls ran at about the measured rate and used CPU too.
        result.cpu_us = cpu / (rps * (SECONDS + WARM_UP)) * 1e6
    return result


def aio_load(
    port: int, path: str, request: Any, concurrency: int, pid: int, token: str = ""
) -> Result:
    """The same cell through a grpc.aio client (bench/loadgen.py), pinned where h2load is."""
    body_file = Path(tempfile.gettempdir()) / f"pa-bench-body-{os.getpid()}.bin"
    body_file.write_bytes(request.SerializeToString())
    args = [
        *pinned_to(1),
        *loadgen.command(port, path, body_file, concurrency, SECONDS, WARM_UP, token),
    ]
    cpu_before = cpu_seconds(pid)
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=SECONDS + 60, check=False, cwd=ROOT
    )
    cpu = cpu_seconds(pid) - cpu_before
    body_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stdout}\n{done.stderr}")
    figures = loadgen.figures(done.stdout)
    result = Result(
        figures["rps"], figures["p50_ms"], figures["p99_ms"], figures["calls"], figures["failed"]
    )
    if result.rps:
        result.cpu_us = cpu / (result.rps * (SECONDS + WARM_UP)) * 1e6
    return result


def paired(ours: Callable[[], Result], base: Callable[[], Result]) -> tuple[Result, Result]:
    """Alternates the two measurements ROUNDS times; each side's median round by RPC/s.

    On a shared machine load comes and goes; alternating spreads it over both sides.
    """
    mine: list[Result] = []
    theirs: list[Result] = []
    for _ in range(ROUNDS):
        mine.append(ours())
        theirs.append(base())
    mine.sort(key=lambda r: r.rps)
    theirs.sort(key=lambda r: r.rps)
    return mine[len(mine) // 2], theirs[len(theirs) // 2]


def _result(rps: float, latencies: list[float], failed: int) -> Result:
    if not latencies:
        return Result(rps, float("nan"), float("nan"), 0, failed)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Result(rps, p50, p99, len(latencies), failed)


# --- writes through a grpc.aio client, and the same SQL straight through psycopg ---------

# One counter for every write measurement: each call changes a value (a repeated value would
# be a no-op the service answers without writing), across cells and across runs.
_write_counter = iter(range(1 << 62))


async def drive(concurrency: int, call: Callable[[int], Awaitable[None]]) -> Result:
    latencies: list[float] = []
    failed = 0
    started = time.perf_counter()
    measure_from = started + WARM_UP
    stop_at = measure_from + SECONDS

    async def worker() -> None:
        nonlocal failed
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call(next(_write_counter))
            except Exception as exc:
                failed += 1
                if failed == 1:
                    say(f"  first failure: {exc!r}"[:300])
            if t0 >= measure_from:
                latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _result(len(latencies) / SECONDS, latencies, failed)


PWD = "global.password_min_length"


def set_config_target(i: int) -> tuple[str, int]:
    """Call i updates a seeded TENANT row at a value that differs from its previous one."""
    n = N_TENANTS // 2  # the seeded overrides: SetConfig's update path, as the baseline's SQL
    return TENANTS[i % n], 9 + (i // n) % 120


async def grpc_set_config(port: int, concurrency: int) -> Result:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(CONFIG + "SetConfig")  # bytes in, bytes out

        async def call(i: int) -> None:
            tenant, value = set_config_target(i)
            request = config_pb2.SetConfigRequest(
                key=PWD,
                scope=config_pb2.CONFIG_SCOPE_TENANT,
                tenant_id=tenant,
                value=config_pb2.ConfigValue(int_value=value),
            )
            await method(request.SerializeToString(), timeout=30)

        return await drive(concurrency, call)


async def sql_set_config(url: str, concurrency: int) -> Result:
    """SetConfig's transaction (storage/configs.py set_value, update path), no gRPC."""
    from psycopg_pool import AsyncConnectionPool

    from storage import configs as q

    async with AsyncConnectionPool(
        url,
        min_size=POOL_MAX,
        max_size=POOL_MAX,
        kwargs={"autocommit": True, "options": "-c search_path=platform_admin,public"},
        open=False,
    ) as pool:
        await pool.wait()

        async def call(i: int) -> None:
            tenant, value = set_config_target(i)
            stored = config_keys.serialize(value)
            target = (PWD, "TENANT", tenant, None)
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(q._LOCK, target)
                current = await cur.fetchone()
                assert current is not None
                cur = await conn.execute(q._UPDATE_VALUE, (stored, None, *target))
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(
                    q._INSERT_HISTORY,
                    (
                        new_ulid(),
                        PWD,
                        "TENANT",
                        tenant,
                        None,
                        "SET",
                        current[4],
                        stored,
                        None,
                        row[8],
                    ),
                )
                payload = {
                    "key": PWD,
                    "scope": "TENANT",
                    "tenant_id": tenant,
                    "node_id": None,
                    "value": value,
                    "description": "",
                    "archived": False,
                    "version": row[7],
                    "update_time": row[8].isoformat(),
                }
                await conn.execute(
                    "INSERT INTO outbox (id, tenant_id, subject, payload, headers)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        new_ulid(),
                        tenant,
                        "platform_admin.config.changed",
                        Jsonb(payload),
                        Jsonb({"changed_by": ""}),
                    ),
                )

        return await drive(concurrency, call)


_round_tenants: dict[int, str] = {}
LIVE_FLAGS = [i for i in range(N_FLAGS) if not archived(i)]


def override_target(i: int) -> tuple[str, str]:
    """Call i enables a tenant no list names yet on flag i mod N: always a real change."""
    round_ = i // len(LIVE_FLAGS)
    tenant = _round_tenants.get(round_)
    if tenant is None:
        tenant = _round_tenants[round_] = new_ulid()
    return flag_key(LIVE_FLAGS[i % len(LIVE_FLAGS)]), tenant


async def grpc_set_override(port: int, concurrency: int) -> Result:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(FLAG + "SetTenantOverride")

        async def call(i: int) -> None:
            key, tenant = override_target(i)
            request = flag_pb2.SetTenantOverrideRequest(
                key=key, tenant_id=tenant, override=flag_pb2.TENANT_OVERRIDE_ENABLED
            )
            await method(request.SerializeToString(), timeout=30)

        return await drive(concurrency, call)


async def sql_set_override(url: str, concurrency: int) -> Result:
    """SetTenantOverride's transaction (storage/flags.py set_override), no gRPC."""
    from psycopg_pool import AsyncConnectionPool

    from domain.flags import Override, apply_override
    from storage import flags as q

    async with AsyncConnectionPool(
        url,
        min_size=POOL_MAX,
        max_size=POOL_MAX,
        kwargs={"autocommit": True, "options": "-c search_path=platform_admin,public"},
        open=False,
    ) as pool:
        await pool.wait()

        async def call(i: int) -> None:
            key, tenant = override_target(i)
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(q._LOCK, (key,))
                current = await cur.fetchone()
                assert current is not None
                enabled, disabled = apply_override(current[3], current[4], tenant, Override.ENABLED)
                cur = await conn.execute(
                    q._UPDATE,
                    {
                        "key": key,
                        "description": current[1],
                        "default_enabled": current[2],
                        "enabled": list(enabled),
                        "disabled": list(disabled),
                        "archived": current[5],
                    },
                )
                row = await cur.fetchone()
                assert row is not None
                payload = {
                    "key": key,
                    "description": row[1] or "",
                    "default_enabled": row[2],
                    "enabled_tenant_ids": sorted(row[3]),
                    "disabled_tenant_ids": sorted(row[4]),
                    "archived": row[5],
                    "version": row[6],
                    "create_time": row[7].isoformat(),
                    "update_time": row[8].isoformat(),
                }
                await conn.execute(
                    "INSERT INTO outbox (id, tenant_id, subject, payload, headers)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        new_ulid(),
                        None,
                        "platform_admin.flag.changed",
                        Jsonb(payload),
                        Jsonb({"changed_by": ""}),
                    ),
                )

        return await drive(concurrency, call)


# --- the run ------------------------------------------------------------------------------

T = TENANTS[0]


def read_rows() -> list[tuple[str, str, Any, Any, Callable[[Any], bool]]]:
    """(label, path, request, response type, check of the answer) per read row."""
    # bench.flag_00000 has T in neither list unless the sample put it there; pick a flag that
    # enables T so the answer is known.
    fifty = [flag_key(i) for i in range(0, N_FLAGS, N_FLAGS // 50)]
    return [
        (
            "EvaluateFlag",
            FLAG + "EvaluateFlag",
            flag_pb2.EvaluateFlagRequest(key=flag_key(1), tenant_id=T),
            flag_pb2.EvaluateFlagResponse,
            lambda r: r.reason != flag_pb2.EVALUATION_REASON_UNSPECIFIED,
        ),
        (
            "EvaluateFlags (50 keys)",
            FLAG + "EvaluateFlags",
            flag_pb2.EvaluateFlagsRequest(tenant_id=T, keys=fifty),
            flag_pb2.EvaluateFlagsResponse,
            lambda r: len(r.evaluations) == 50,
        ),
        (
            "EvaluateFlags (all 1,000)",
            FLAG + "EvaluateFlags",
            flag_pb2.EvaluateFlagsRequest(tenant_id=T),
            flag_pb2.EvaluateFlagsResponse,
            # every live flag: the seed archives one in fifty
            lambda r: len(r.evaluations) == N_FLAGS - N_FLAGS // 50,
        ),
        (
            "ResolveConfig",
            CONFIG + "ResolveConfig",
            config_pb2.ResolveConfigRequest(key=PWD, tenant_id=T),
            config_pb2.ResolveConfigResponse,
            lambda r: r.source_scope == config_pb2.CONFIG_SCOPE_TENANT,
        ),
        (
            "ResolveConfigs (all keys)",
            CONFIG + "ResolveConfigs",
            config_pb2.ResolveConfigsRequest(tenant_id=T, node_id=NODES[0]),
            config_pb2.ResolveConfigsResponse,
            lambda r: len(r.configs) == len(config_keys.ALLOW_LIST),
        ),
    ]


def usable(port: int, path: str, request: Any, response_type: Any, check: Any) -> bool:
    try:
        answer = call_once(port, path, request, response_type)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise
    if not check(answer):
        raise RuntimeError(f"{path} answered wrongly: {answer}")
    return True


Row = tuple[str, int, Result, Result | None]


# The cells measured with the grpc.aio client too (at the highest concurrency).
AIO_ROWS = ("EvaluateFlag", "ResolveConfig")


def bench_reads(url: str, workdir: Path) -> list[Row]:
    """Every read cell with authentication off and on (ES256, as deployed), beside the same
    empty handler; AIO_ROWS also through a grpc.aio client."""
    rows: list[Row] = []
    auth = ES256Auth.create(workdir)
    service = start_service(url, workdir, cpu=0)
    secured = start_service(url, workdir, cpu=0, settings=auth.settings)
    empty = start_empty(workdir, cpu=0)
    servers = ((service, "", ""), (secured, auth.token, " · auth on"))
    try:
        for label, path, request, response_type, check in read_rows():
            if not usable(service.port, path, request, response_type, check):
                say(f"{label}: not served yet, skipped")
                continue
            body = frame(request)
            for server, token, suffix in servers:
                for c in CONCURRENCY:
                    ours, base = paired(
                        lambda: h2load(
                            server.port,  # noqa: B023
                            path,  # noqa: B023
                            body,  # noqa: B023
                            c,  # noqa: B023
                            workdir,
                            pid=server.process.pid,  # noqa: B023
                            token=token,  # noqa: B023
                        ),
                        lambda: h2load(empty.port, path, body, c, workdir, pid=empty.process.pid),  # noqa: B023
                    )
                    say(f"{label}{suffix} c={c}: {ours.rps:,.0f} vs {base.rps:,.0f} RPC/s")
                    if ours.failed:
                        raise RuntimeError(f"{label}{suffix}: {ours.failed} calls failed")
                    rows.append((label + suffix, c, ours, base))
            if label not in AIO_ROWS:
                continue
            c = CONCURRENCY[-1]
            for server, token, suffix in servers:
                ours, base = paired(
                    lambda: aio_load(server.port, path, request, c, server.process.pid, token),  # noqa: B023
                    lambda: aio_load(empty.port, path, request, c, empty.process.pid),  # noqa: B023
                )
                say(f"{label} (aio client){suffix} c={c}: {ours.rps:,.0f} vs {base.rps:,.0f}")
                if ours.failed:
                    raise RuntimeError(f"{label} (aio client){suffix}: {ours.failed} failed")
                rows.append((f"{label} (aio client){suffix}", c, ours, base))
    finally:
        service.stop()
        secured.stop()
        empty.stop()
    return rows


def bench_writes(url: str, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    service = start_service(url, workdir)
    try:
        for label, ours_fn, base_fn in (
            ("SetConfig", grpc_set_config, sql_set_config),
            ("SetTenantOverride", grpc_set_override, sql_set_override),
        ):
            for c in CONCURRENCY:
                ours, base = paired(
                    lambda: asyncio.run(ours_fn(service.port, c)),  # noqa: B023
                    lambda: asyncio.run(base_fn(url, c)),  # noqa: B023
                )
                say(f"{label} c={c}: {ours.rps:,.0f} vs {base.rps:,.0f} TPS")
                rows.append((label, c, ours, base))
    finally:
        service.stop()
    return rows


def bench_workers(url: str, workdir: Path) -> tuple[Result, Result]:
    """EvaluateFlag at concurrency 64, 1 worker then 2 workers, nothing pinned."""
    label, path, request, _, _ = read_rows()[0]
    body = frame(request)
    results = []
    for workers in (1, 2):
        port = free_port()
        service = start_service(url, workdir, workers=workers, port=port)
        try:
            if workers == 2:
                time.sleep(2)  # the second worker listens a moment after the first
            results.append(h2load(service.port, path, body, 64, workdir, pin=False))
        finally:
            service.stop()
        say(f"{label} c=64, {workers} worker(s): {results[-1].rps:,.0f} RPC/s")
    return results[0], results[1]


def bench_cold_start(server_url: str, workdir: Path) -> tuple[float, float, float]:
    """(seconds from spawn to SERVING, read model load seconds, resident MB) at 10,000 flags."""
    with own_database(server_url, f"pa_bench_cold_{os.getpid()}") as url:
        seed(url, N_COLD_FLAGS)
        started = time.perf_counter()
        service = start_service(url, workdir, log_level="info")
        ready = time.perf_counter() - started
        try:
            for tenant in TENANTS[:20]:  # fill the answer caches a little, as traffic would
                call_once(
                    service.port,
                    FLAG + "EvaluateFlags",
                    flag_pb2.EvaluateFlagsRequest(tenant_id=tenant),
                    flag_pb2.EvaluateFlagsResponse,
                )
            rss = service.rss_mb()
            load = float("nan")
            for line in service.log_path.read_text().splitlines():
                if "read model loaded" in line:
                    load = float(line.rsplit(" in ", 1)[1].split()[0]) / 1000
        finally:
            service.stop()
    say(f"cold start 10,000 flags: {ready:.2f} s to SERVING, load {load:.3f} s, {rss:.0f} MB")
    return ready, load, rss


def bench_propagation(url: str, workdir: Path, samples: int = 50) -> Result:
    """A write through process A, until process B answers with it (ms)."""
    a = start_service(url, workdir)
    try:
        b = start_service(url, workdir)
    except BaseException:
        a.stop()
        raise
    latencies = []
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{a.port}") as ch_a,
            grpc.insecure_channel(f"127.0.0.1:{b.port}") as ch_b,
        ):
            write = ch_a.unary_unary(
                CONFIG + "SetConfig",
                request_serializer=config_pb2.SetConfigRequest.SerializeToString,
                response_deserializer=config_pb2.SetConfigResponse.FromString,
            )
            read = ch_b.unary_unary(
                CONFIG + "ResolveConfig",
                request_serializer=config_pb2.ResolveConfigRequest.SerializeToString,
                response_deserializer=config_pb2.ResolveConfigResponse.FromString,
            )
            tenant = TENANTS[-1]
            for n in range(samples):
                value = 20 + n
                write(
                    config_pb2.SetConfigRequest(
                        key=PWD,
                        scope=config_pb2.CONFIG_SCOPE_TENANT,
                        tenant_id=tenant,
                        value=config_pb2.ConfigValue(int_value=value),
                    ),
                    timeout=10,
                )
                written = time.perf_counter()
                request = config_pb2.ResolveConfigRequest(key=PWD, tenant_id=tenant)
                while read(request, timeout=10).value.int_value != value:
                    if time.perf_counter() - written > 10:
                        raise RuntimeError("the write never reached the other process")
                latencies.append((time.perf_counter() - written) * 1000)
                time.sleep(0.02)
    finally:
        a.stop()
        b.stop()
    result = _result(0, latencies, 0)
    say(f"propagation: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms")
    return result


def fmt_table(rows: list[Row]) -> str:
    lines = [
        "| RPC | conc. | RPC/s | p50 ms | p99 ms | baseline RPC/s | baseline p50 | baseline p99"
        " | RPC/s ratio | p99 ratio | server CPU µs/call (baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c, ours, base in rows:
        b = base
        cells = [
            label,
            str(c),
            f"{ours.rps:,.0f}",
            f"{ours.p50_ms:.2f}",
            f"{ours.p99_ms:.2f}",
        ]
        if b is None:
            cells += ["", "", "", "", "", ""]
        else:
            cells += [
                f"{b.rps:,.0f}",
                f"{b.p50_ms:.2f}",
                f"{b.p99_ms:.2f}",
                f"{ours.rps / b.rps:.2f}×" if b.rps else "",
                f"{ours.p99_ms / b.p99_ms:.2f}×" if b.p99_ms else "",
                f"{ours.cpu_us:.0f} ({b.cpu_us:.0f})"
                if ours.cpu_us is not None and b.cpu_us is not None
                else "",
            ]
        if ours.failed:
            cells[0] += f" ({ours.failed} failed)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    if shutil.which("h2load") is None:
        say("h2load is missing: apt-get install nghttp2-client (make bench installs it)")
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    with bench_server_url() as server_url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with own_database(server_url, f"pa_bench_{os.getpid()}") as url:
            seed(url, N_FLAGS)
            rows += bench_reads(url, workdir)
            rows += bench_writes(url, workdir)
            one, two = bench_workers(url, workdir)
            propagation = bench_propagation(url, workdir)
        ready, load, rss = bench_cold_start(server_url, workdir)
    print()
    print(fmt_table(rows))
    print()
    print(
        f"- 2 workers vs 1 (EvaluateFlag, c=64, unpinned): {two.rps:,.0f} vs {one.rps:,.0f}"
        f" RPC/s = {two.rps / one.rps:.2f}×"
    )
    print(
        f"- cold start with {N_COLD_FLAGS:,} flags: {ready:.2f} s from process spawn to SERVING"
        f" (read model load {load * 1000:.0f} ms); resident memory {rss:.0f} MB"
    )
    print(
        f"- cross-process propagation of a write (SetConfig on process A until ResolveConfig"
        f" on process B answers it, {propagation.calls} writes): p50 {propagation.p50_ms:.1f} ms,"
        f" p99 {propagation.p99_ms:.1f} ms"
    )
    print(
        f"(total {time.monotonic() - started:.0f} s; {SECONDS:g} s per measurement"
        f"{', service and empty server pinned to CPU 0, h2load to CPU 1' if PINNED else ''})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
