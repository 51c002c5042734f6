"""OpenFeature rows of ``make bench``: each protocol beside the platform_admin.v1 call it
stands for, on the same server in the same run (alternated rounds, as bench/hot_path.py).

* flagd ``ResolveBoolean`` (gRPC, v2) beside ``EvaluateFlag``;
* OFREP single evaluation (HTTP/1.1 POST) beside ``EvaluateFlag``;
* OFREP bulk (1,000 flags + the config keys) beside ``EvaluateFlags`` for every flag;
* the flagd provider in in-process mode: evaluations per second in this process, beside
  the same question asked of ``EvaluateFlag`` over gRPC (one caller, sequential).

The baseline column is the platform_admin.v1 call; "RPC/s ratio" is ours / baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from flagd.evaluation.v2 import evaluation_pb2 as ev2
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from platform_admin.v1 import flag_pb2 as fpb

from bench.harness import (
    bench_server_url,
    cpu_seconds,
    free_port,
    own_database,
    pinned_to,
    say,
    start_service,
)
from bench.hot_path import (
    FLAG,
    N_FLAGS,
    SECONDS,
    TENANTS,
    WARM_UP,
    Result,
    _result,
    call_once,
    flag_key,
    fmt_table,
    frame,
    h2load,
    paired,
    seed,
)

CONCURRENCY = (1, 16)
FLAGD_V2 = "/flagd.evaluation.v2.Service/"
T = TENANTS[0]
KEY = flag_key(1)  # live (archived() spares it), with tenant lists
Row = tuple[str, int, Result, Result | None]


def h2load_http(
    port: int, path: str, body: bytes, concurrency: int, workdir: Path, pid: int | None = None
) -> Result:
    """h2load over HTTP/1.1 (the listener speaks no h2c): POST ``body`` as JSON."""
    clients = concurrency
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    log_file = workdir / "h2load-http.log"
    log_file.unlink(missing_ok=True)
    args = [
        *pinned_to(1),
        "h2load",
        "--h1",
        "-c",
        str(clients),
        "-m",
        "1",
        "-D",
        f"{int(SECONDS * 1000)}ms",
        f"--warm-up-time={int(WARM_UP * 1000)}ms",
        "-H",
        "content-type: application/json",
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
    latencies, failed = [], 0
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
        result.cpu_us = cpu / (rps * (SECONDS + WARM_UP)) * 1e6
    return result


def _post(port: int, path: str, body: bytes) -> dict[str, object]:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        parsed: dict[str, object] = json.loads(answer.read())
        return parsed


def in_process_rate(port: int, seconds: float) -> float:
    """Evaluations per second of the flagd provider in in-process mode (one thread)."""
    provider = FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=port, deadline_ms=10_000
    )
    api.set_provider_and_wait(provider, "bench")
    client = api.get_client("bench")
    context = EvaluationContext(T)
    keys = [flag_key(i) for i in range(1, 200, 3)]
    try:
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for key in keys:
                client.get_boolean_value(key, False, context)
            count += len(keys)
        return count / seconds
    finally:
        provider.shutdown()


def sequential_grpc_rate(port: int, seconds: float) -> float:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            FLAG + "EvaluateFlag",
            request_serializer=fpb.EvaluateFlagRequest.SerializeToString,
            response_deserializer=fpb.EvaluateFlagResponse.FromString,
        )
        request = fpb.EvaluateFlagRequest(key=KEY, tenant_id=T)
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            call(request, timeout=5)
            count += 1
        return count / seconds


def measure(port: int, http_port: int, pid: int, c: int, workdir: Path) -> list[Row]:
    resolve = ev2.ResolveBooleanRequest(flag_key=KEY)
    resolve.context.update({"targetingKey": T})
    evaluate = frame(fpb.EvaluateFlagRequest(key=KEY, tenant_id=T))
    every = frame(fpb.EvaluateFlagsRequest(tenant_id=T))
    body = json.dumps({"context": {"targetingKey": T}}).encode()
    single_path = f"/ofrep/v1/evaluate/flags/{KEY}"

    def base() -> Result:
        return h2load(port, FLAG + "EvaluateFlag", evaluate, c, workdir, pid=pid)

    def flagd() -> Result:
        return h2load(port, FLAGD_V2 + "ResolveBoolean", frame(resolve), c, workdir, pid=pid)

    def ofrep_single() -> Result:
        return h2load_http(http_port, single_path, body, c, workdir, pid=pid)

    def ofrep_bulk() -> Result:
        return h2load_http(http_port, "/ofrep/v1/evaluate/flags", body, c, workdir, pid=pid)

    def evaluate_all() -> Result:
        return h2load(port, FLAG + "EvaluateFlags", every, c, workdir, pid=pid)

    say(f"OpenFeature rows, concurrency {c} …")
    return [
        ("flagd v2 ResolveBoolean vs EvaluateFlag", c, *paired(flagd, base)),
        ("OFREP single (HTTP/1.1) vs EvaluateFlag", c, *paired(ofrep_single, base)),
        (f"OFREP bulk ({N_FLAGS:,} flags) vs EvaluateFlags", c, *paired(ofrep_bulk, evaluate_all)),
    ]


def main() -> int:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, bench_server_url() as server_url:
        workdir = Path(tmp)
        with own_database(server_url, "platform_admin_bench_openfeature") as url:
            say(f"seeding {N_FLAGS} flags …")
            seed(url, N_FLAGS)
            http_port = free_port()
            http = {"PLATFORM_ADMIN_HTTP_LISTEN": f"127.0.0.1:{http_port}"}
            service = start_service(url, workdir, cpu=0, settings=http)
            try:
                port, pid = service.port, service.process.pid
                resolve = ev2.ResolveBooleanRequest(flag_key=KEY)
                resolve.context.update({"targetingKey": T})
                answer = call_once(
                    port, FLAGD_V2 + "ResolveBoolean", resolve, ev2.ResolveBooleanResponse
                )
                assert answer.reason in ("DEFAULT", "TARGETING_MATCH"), answer
                single = json.dumps({"context": {"targetingKey": T}}).encode()
                bulk = _post(http_port, "/ofrep/v1/evaluate/flags", single)
                assert isinstance(bulk["flags"], list) and len(bulk["flags"]) >= N_FLAGS // 2
                for c in CONCURRENCY:
                    rows += measure(port, http_port, pid, c, workdir)
                say("in-process evaluations/s …")
                local = in_process_rate(port, max(SECONDS, 1.0))
                remote = sequential_grpc_rate(port, max(SECONDS, 1.0))
            finally:
                service.stop()
    print(fmt_table(rows))
    print()
    print(
        f"flagd provider, in-process mode: {local:,.0f} evaluations/s in one Python thread"
        f" (EvaluateFlag over gRPC from one sequential caller: {remote:,.0f}/s,"
        f" {local / remote:.0f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
