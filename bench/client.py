"""`make bench-client`: the client library's in-process answers, change latency and memory.

What it does (a few minutes):

1. Uses its own database (DATABASE_URL's server, or an embedded PostgreSQL under
   ``.data/pg-bench``) seeded like `make bench`: 10,000 flags with 30 named tenants each
   and TENANT / NODE rows for every config key; starts one ``platform-admin serve``.
2. Local vs RPC: one client in this process; ``is_enabled`` and ``config`` called in a
   tight loop on one thread, per wall second and per CPU-second of that thread (one
   core's worth, whatever else the machine runs), against ``EvaluateFlag`` /
   ``ResolveConfig`` called one after the other from the same process (each call waits
   for its answer).
3. Memory: a fresh process holding one READY client with all 10,000 flags and every
   config row; the growth of its resident set and of Python's heap (tracemalloc).
4. Latency: a second database with 20 flags and a server on it; 1,000 clients (each with
   its own connection and both streams) in ``BENCH_CLIENT_PROCESSES`` child processes
   (default 4, two loop threads each); one flag changed every ``BENCH_CLIENT_INTERVAL_MS``
   through UpdateFlag; latency = the client's ``on_change`` call - the moment UpdateFlag
   returned (CLOCK_MONOTONIC, one clock for all processes). The clients' own cost of
   receiving 1,000 messages per change runs on the same machine as the server.

Environment: BENCH_CLIENT_SECONDS (default 2), BENCH_CLIENT_CLIENTS (default 1000),
BENCH_CLIENT_PROCESSES (default 4), BENCH_CLIENT_CHANGES (default 40),
BENCH_CLIENT_INTERVAL_MS (default 200), DATABASE_URL.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin_client import Change, Client, LoopThread

from bench import hot_path, watch
from bench.harness import ROOT, bench_server_url, own_database, say, start_service

SECONDS = float(os.environ.get("BENCH_CLIENT_SECONDS", "2"))
CLIENTS = int(os.environ.get("BENCH_CLIENT_CLIENTS", "1000"))
CHANGES = int(os.environ.get("BENCH_CLIENT_CHANGES", "40"))
INTERVAL_S = int(os.environ.get("BENCH_CLIENT_INTERVAL_MS", "200")) / 1000
N_FLAGS = 10_000
PROCESSES = int(os.environ.get("BENCH_CLIENT_PROCESSES", "4"))
THREADS_PER_PROCESS = 2
LATENCY_KEY = "bench.flag-0"


def _rate(call: object, pairs: list[tuple[str, str]], seconds: float) -> tuple[float, float]:
    """``call(*pair)`` over ``pairs`` for ``seconds``: calls per wall second and per CPU
    second of this thread (what one core does, however busy the machine is)."""
    fn = call  # local name: the loop measures the call, not the attribute look-up
    done = 0
    started, cpu_started = time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        for a, b in pairs:
            fn(a, b)  # type: ignore[operator]
        done += len(pairs)
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    return done / wall, done / cpu


def _rpc_rate(call: object, requests: list[object], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for request in requests[:50]:
            call(request, timeout=5)  # type: ignore[operator]
        done += min(50, len(requests))
    return done / (time.perf_counter() - started)


def local_vs_rpc(port: int) -> list[tuple[str, float, float, float]]:
    keys = [hot_path.flag_key(i) for i in range(0, N_FLAGS, 7)]
    tenants = hot_path.TENANTS
    pairs = [(keys[i % len(keys)], tenants[i % len(tenants)]) for i in range(1000)]
    config_keys = ["global.session_idle_minutes", "email.smtp_port", "global.mfa_required_default"]
    config_pairs = [(config_keys[i % 3], tenants[i % len(tenants)]) for i in range(1000)]
    with Client(f"127.0.0.1:{port}") as client:
        if not client.wait_ready(120):
            raise RuntimeError(f"client not READY: {client.state} {client.error}")
        local_flag = _rate(client.is_enabled, pairs, SECONDS)
        local_config = _rate(client.config, config_pairs, SECONDS)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        flag_requests = [flag_pb2.EvaluateFlagRequest(key=k, tenant_id=t) for k, t in pairs]
        config_requests = [
            config_pb2.ResolveConfigRequest(key=k, tenant_id=t) for k, t in config_pairs
        ]
        _rpc_rate(flags.EvaluateFlag, flag_requests, 0.3)  # warm up the connection
        rpc_flag = _rpc_rate(flags.EvaluateFlag, flag_requests, SECONDS)
        rpc_config = _rpc_rate(configs.ResolveConfig, config_requests, SECONDS)
    return [
        ("is_enabled / EvaluateFlag", *local_flag, rpc_flag),
        ("config / ResolveConfig", *local_config, rpc_config),
    ]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_child(port: int, trace: bool) -> None:
    """Runs in a fresh process: prints the memory one READY client with everything takes.

    With ``trace`` it reports Python's heap (tracemalloc); without, the resident set's
    growth. Not both in one run: tracemalloc's own bookkeeping inflates the resident set.
    """
    gc.collect()
    rss_before = _rss_kb()
    if trace:
        tracemalloc.start()
    client = Client(f"127.0.0.1:{port}")
    if not client.wait_ready(300):
        raise RuntimeError(f"client not READY: {client.state} {client.error}")
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] if trace else 0
    if trace:
        tracemalloc.stop()
    gc.collect()
    rss_after = _rss_kb()
    flags = len(client.flag_keys())
    rows = len(client._copy.configs.states())
    client.close()
    print(json.dumps({"flags": flags, "rows": rows, "heap": heap, "rss": rss_after - rss_before}))


def _memory_run(port: int, mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.client", mode, str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def memory(port: int) -> dict[str, float]:
    """Heap from a traced run, resident-set growth from an untraced one."""
    traced = _memory_run(port, "--memory-heap")
    untraced = _memory_run(port, "--memory-rss")
    return {**untraced, "heap": traced["heap"]}


def subscribers_child(port: int, count: int) -> None:
    """Runs in a child process: ``count`` clients; reports READY, then every on_change time."""
    received: dict[int, list[float]] = {}
    lock = threading.Lock()

    def listener(change: Change) -> None:
        at = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        if change.state is not None:
            with lock:
                received.setdefault(change.state.version, []).append(at)

    threads = [LoopThread(f"bench-client-{i}") for i in range(THREADS_PER_PROCESS)]
    clients = []
    for i in range(count):
        client = Client(f"127.0.0.1:{port}", loop_thread=threads[i % len(threads)])
        client.on_change(listener, keys=[LATENCY_KEY])
        clients.append(client)
    deadline = time.monotonic() + 240
    ready = sum(c.wait_ready(max(0.0, deadline - time.monotonic())) for c in clients)
    print(json.dumps({"ready": ready}), flush=True)
    sys.stdin.readline()  # the parent is done writing
    with lock:
        print(json.dumps({"received": received}), flush=True)
    for client in clients:
        client.close()
    for thread in threads:
        thread.stop()


def latency(port: int) -> tuple[list[float], int, int]:
    """Commit -> on_change latencies (s), deliveries missing, clients READY."""
    share = [CLIENTS // PROCESSES + (i < CLIENTS % PROCESSES) for i in range(PROCESSES)]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.client", "--subscribers", str(port), str(n)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in share
    ]
    try:
        ready = 0
        for child in children:
            assert child.stdout is not None
            ready += json.loads(child.stdout.readline())["ready"]
        say(f"{ready} of {CLIENTS} clients READY in {PROCESSES} processes")
        committed: dict[int, float] = {}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = flag_pb2_grpc.FlagServiceStub(channel)
            for i in range(CHANGES):
                answer = stub.UpdateFlag(
                    flag_pb2.UpdateFlagRequest(key=LATENCY_KEY, description=f"change {i}"),
                    timeout=10,
                )
                committed[int(answer.flag.etag)] = time.monotonic()
                time.sleep(INTERVAL_S)
        time.sleep(3.0)
        received: dict[int, list[float]] = {}
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("done\n")
            child.stdin.flush()
            for version, times in json.loads(child.stdout.readline())["received"].items():
                received.setdefault(int(version), []).extend(times)
        samples = [
            at - committed[v] for v, times in received.items() if v in committed for at in times
        ]
        missing = sum(max(0, ready - len(received.get(v, []))) for v in committed)
        return samples, missing, ready
    finally:
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    say(f"bench-client: {SECONDS}s per rate, {CLIENTS} clients, {CHANGES} changes")
    with (
        bench_server_url() as server_url,
        own_database(server_url, "pa_bench_client") as url,
        own_database(server_url, "pa_bench_client_latency") as latency_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        hot_path.seed(url, N_FLAGS)
        watch.seed(latency_url)
        workdir = Path(tmp)
        server = start_service(url, workdir)
        try:
            say("local answers vs RPC")
            rates = local_vs_rpc(server.port)
            say("memory of one client holding everything")
            mem = memory(server.port)
        finally:
            server.stop()
        # Auth is off, so every client is the same principal; each holds two streams.
        streams = {"PLATFORM_ADMIN_WATCH_MAX_STREAMS_PER_PRINCIPAL": str(2 * CLIENTS + 10)}
        server = start_service(latency_url, workdir, settings=streams)
        try:
            small = memory(server.port)  # the same client with 20 flags: its fixed cost
            say(f"commit -> on_change with {CLIENTS} clients")
            samples, missing, ready = latency(server.port)
        finally:
            server.stop()

    print("| call | local calls/s | local calls per CPU-second | RPC calls/s | local / RPC |")
    print("|---|---:|---:|---:|---:|")
    for name, local, per_cpu, rpc in rates:
        print(f"| {name} | {local:,.0f} | {per_cpu:,.0f} | {rpc:,.0f} | {local / rpc:,.0f}x |")
    print()
    print("| clients READY | deliveries | missing | p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {ready:,} | {len(samples):,} | {missing} | {_pct(samples, 0.5) * 1000:.1f} |"
        f" {_pct(samples, 0.99) * 1000:.1f} | {max(samples, default=0) * 1000:.1f} |"
    )
    print()
    print("| one client holding | Python heap MB | resident set growth MB |")
    print("|---|---:|---:|")
    for m in (small, mem):
        print(
            f"| {m['flags']:,} flags, {m['rows']:,} config rows |"
            f" {m['heap'] / 2**20:.1f} | {m['rss'] / 1024:.1f} |"
        )
    ok = ready == CLIENTS and missing == 0 and rates[0][2] >= 1_000_000
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--memory-heap", "--memory-rss"):
        memory_child(int(sys.argv[2]), trace=sys.argv[1] == "--memory-heap")
    elif len(sys.argv) == 4 and sys.argv[1] == "--subscribers":
        subscribers_child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
