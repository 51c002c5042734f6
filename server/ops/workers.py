"""Multi-process serving: N server processes sharing one port (``PLATFORM_ADMIN_WORKERS``).

A grpc.aio process saturates one core at a few thousand RPC/s, so ``serve`` starts one
process per core. Each worker is a complete server (its own pool, read model, outbox tail
and background jobs) bound with ``grpc.so_reuseport``; the kernel spreads connections
across them. Background jobs already coordinate through advisory locks and SKIP LOCKED,
so running them in every worker is safe.

The parent only supervises: it starts the database and migrates once (in cli.py) before
starting the workers, forwards SIGTERM/SIGINT to them and waits for their graceful stop,
and stops everything if a worker dies on its own (the supervisor above restarts the
service as a whole; a half-running set of workers would hide the failure).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from server.ops import logs
from server.settings import Settings

log = logging.getLogger("platform_admin")

# Extra time beyond the grace period before a worker that did not stop is killed.
KILL_AFTER_GRACE_S = 5.0
WorkerMain = Callable[[Settings, str], int]


def _worker(main: WorkerMain, settings: Settings, conninfo: str, index: int) -> None:
    logs.setup(settings.log_level, settings.log_format)
    if settings.metrics_listen is not None:
        # Each worker is its own scrape target: worker i on the metrics port + i.
        from server.ops.metrics import worker_listen

        settings = replace(settings, metrics_listen=worker_listen(settings.metrics_listen, index))
    log.info("worker %d started (pid %d)", index, os.getpid())
    raise SystemExit(main(settings, conninfo))


def check_port(settings: Settings) -> None:
    """Workers must share one fixed port; port 0 would give each its own random port."""
    from server.settings import SettingsError

    if settings.workers > 1 and settings.listen.rpartition(":")[2] == "0":
        raise SettingsError(
            f"PLATFORM_ADMIN_WORKERS={settings.workers} needs a fixed port in"
            f" PLATFORM_ADMIN_LISTEN (got {settings.listen})"
        )
    http = settings.http_listen
    if settings.workers > 1 and http is not None and http.rpartition(":")[2] == "0":
        raise SettingsError(
            f"PLATFORM_ADMIN_WORKERS={settings.workers} needs a fixed port in"
            f" PLATFORM_ADMIN_HTTP_LISTEN (got {http}): the workers share it"
        )


def run(settings: Settings, conninfo: str, main: WorkerMain) -> int:
    """Runs ``settings.workers`` processes of ``main`` until SIGTERM/SIGINT; returns exit code.

    ``main`` must be a module-level function (workers are spawned, not forked: gRPC and
    psycopg state must not be inherited).
    """
    ctx = multiprocessing.get_context("spawn")
    # Migrations already ran in the parent; workers must not race to re-check them.
    child_settings = replace(settings, migrate_on_start=False)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[BaseProcess] = []
    code = 0
    try:
        for index in range(settings.workers):
            process = ctx.Process(
                target=_worker,
                args=(main, child_settings, conninfo, index),
                name=f"platform-admin-worker-{index}",
            )
            process.start()
            workers.append(process)
        log.info("started %d workers on %s", len(workers), settings.listen)
        while not stopping.is_set():
            ended = multiprocessing.connection.wait([p.sentinel for p in workers], timeout=0.5)
            if ended and not stopping.is_set():
                for dead in [p for p in workers if not p.is_alive()]:
                    log.error(
                        "worker %s exited with code %s; stopping the others",
                        dead.name,
                        dead.exitcode,
                    )
                code = 1
                break
    finally:
        _stop_all(workers, settings.shutdown_grace_s + KILL_AFTER_GRACE_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0 and any(p.exitcode not in (0, None) for p in workers):
        code = 1
    return code


def _stop_all(workers: list[BaseProcess], timeout: float) -> None:
    for process in workers:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker %s did not stop in %.0fs; killing it", process.name, timeout)
            process.kill()
            process.join()
