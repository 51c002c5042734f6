"""A grpc.aio client load generator: how internal services call the service.

h2load measures the server with a client that costs almost nothing; services call it
through grpc.aio stubs, whose per-call work (and HTTP/2 behaviour) differ. This sends one
pre-serialized request over and over from ``concurrency`` tasks spread over a few
channels, for WARM_UP + SECONDS, and prints one JSON line: RPC/s, p50/p99 in ms (measured
calls only), calls and failures.

Usage: python -m bench.loadgen PORT PATH BODY_FILE CONCURRENCY SECONDS WARM_UP [TOKEN]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

# Channels (HTTP/2 connections) the tasks share, as h2load spreads its streams over clients.
CHANNELS = 4


async def run(
    port: int, path: str, body: bytes, concurrency: int, seconds: float, warm_up: float, token: str
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            # Distinct channels, not one shared subchannel.
            options=[("grpc.channel_id", i), ("grpc.use_local_subchannel_pool", 1)],
        )
        for i in range(min(CHANNELS, concurrency))
    ]
    # No serializers: the body goes out as it is and the answer stays bytes.
    calls = [channel.unary_unary(path) for channel in channels]
    latencies: list[float] = []
    failed = 0
    started = time.perf_counter()
    measure_from = started + warm_up
    stop_at = measure_from + seconds

    async def worker(i: int) -> None:
        nonlocal failed
        call = calls[i % len(calls)]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call(body, metadata=metadata, timeout=10)
            except grpc.RpcError:
                failed += 1
            if t0 >= measure_from:
                latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / seconds,
        "p50_ms": latencies[n // 2] if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "calls": n,
        "failed": failed,
    }


def command(
    port: int,
    path: str,
    body_file: Path,
    concurrency: int,
    seconds: float,
    warm_up: float,
    token: str = "",
) -> list[str]:
    """The command line that runs this load generator in a process of its own."""
    return [
        sys.executable,
        "-m",
        "bench.loadgen",
        str(port),
        path,
        str(body_file),
        str(concurrency),
        str(seconds),
        str(warm_up),
        *([token] if token else []),
    ]


def figures(stdout: str) -> dict[str, Any]:
    """The figures a run printed (its last line): rps, p50_ms, p99_ms, calls, failed."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> None:
    port, path, body_file, concurrency, seconds, warm_up = argv[:6]
    token = argv[6] if len(argv) > 6 else ""
    result = asyncio.run(
        run(
            int(port),
            path,
            Path(body_file).read_bytes(),
            int(concurrency),
            float(seconds),
            float(warm_up),
            token,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
