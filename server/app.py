"""Assembles the gRPC server: servicers, pipeline, health, reflection, background tasks.

``App`` owns one process's resources (pool, server, tasks) so tests can start several
replicas in one event loop, and ``serve`` in cli.py runs one until a signal arrives.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin.v1 import health_pb2 as health_api_pb2
from platform_admin.v1 import health_pb2_grpc as health_api_pb2_grpc

from server.bus.bus import Bus
from server.bus.wakeup import ChangeSignal
from server.changes.feed import ChangeFeed
from server.changes.read_model import ReadModel
from server.changes.tail import Sequencer, Tail
from server.console import routes as console
from server.http import api
from server.http.listener import HttpListener, RouteRegistrar, build_application
from server.openfeature import ofrep
from server.openfeature.service import FILES as OPENFEATURE_FILES
from server.openfeature.service import SERVICE_NAMES as OPENFEATURE_SERVICE_NAMES
from server.openfeature.service import OpenFeature
from server.ops import metrics
from server.ops.metrics import MetricsServer, RpcMetrics
from server.ops.prober import Prober, ProberConfig, prune_loop
from server.rpc import reflection
from server.rpc.access_log import AccessLog
from server.rpc.config_service import ConfigServicer
from server.rpc.flag_service import FlagServicer
from server.rpc.health_service import HealthServicer
from server.rpc.observers import CallObserver
from server.rpc.pipeline import Authorizer, Pipeline
from server.rpc.watch import Watch
from server.settings import Settings, SettingsError
from storage.db import Database, PoolSettings

log = logging.getLogger(__name__)

# platform_admin.v1's own services (also the HTTP listener's JSON API, by name).
PLATFORM_SERVICE_NAMES = [
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    flag_pb2.DESCRIPTOR.services_by_name["FlagService"].full_name,
    health_api_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name,
]
# Every service on the gRPC port (reflection lists them all: server/rpc/reflection.py).
SERVICE_NAMES = [*PLATFORM_SERVICE_NAMES, *OPENFEATURE_SERVICE_NAMES]
# grpc.health.v1 service name that is SERVING while the in-memory read model is current.
READ_MODEL_HEALTH = "platform_admin.v1.ReadModel"
# grpc.health.v1 service name that is SERVING while this process is connected to NATS
# (only registered when the bus is on; the overall "" status never depends on it).
RELAY_HEALTH = "platform_admin.v1.Relay"
MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 1024


def pool_settings(settings: Settings, conninfo: str) -> PoolSettings:
    """Kept for callers of the composition root; the mapping is Settings.pool_settings."""
    return settings.pool_settings(conninfo)


def server_options(reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        # Long watch streams: ping idle connections so proxies keep them, and recycle
        # connections now and then so load rebalances across replicas.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 60_000),
    ]


@dataclass
class App:
    settings: Settings
    conninfo: str
    # No default: whoever composes the server chooses (AllowAll only for dev mode and tests).
    authorizer: Authorizer = field(kw_only=True)
    observers: list[CallObserver] = field(default_factory=list)
    credentials: grpc.ServerCredentials | None = None
    # TLS for the HTTP listener (server/security/tls.py http_ssl_context), beside credentials.
    http_ssl: ssl.SSLContext | None = None
    reuse_port: bool = False
    health_interval_s: float = 1.0

    def __post_init__(self) -> None:
        self.db = Database(self.settings.pool_settings(self.conninfo))
        # The change stream: one tail per process feeds every watch stream; every replica
        # runs a sequencer, the advisory lock lets one at a time work (server/changes/tail.py).
        self.tail = Tail(self.db, self.settings.pool_settings(self.conninfo))
        self.sequencer = Sequencer(self.db)
        self.sequencer.on_sequenced = lambda _top: self.tail.wake()
        self.db.after_commit = self.sequencer.wake
        # The one way to consume the stream: every consumer subscribes here
        # (server/changes/feed.py; docs/adr/0006-change-events-and-subscriptions.md).
        self.changes = ChangeFeed(self.db, self.tail)
        self.watch = Watch(
            self.db,
            self.changes,
            heartbeat_s=self.settings.watch_heartbeat_s,
            max_streams=self.settings.watch_max_streams,
            max_streams_per_principal=self.settings.watch_max_streams_per_principal,
            snapshot_deadline_s=self.settings.watch_snapshot_deadline_s,
        )
        # Metrics and the access log see every call; observers passed in come after them.
        self.observers = [
            RpcMetrics(),
            *(
                [AccessLog(self.settings.log_format, self.settings.access_log_hot_reads)]
                if self.settings.access_log
                else []
            ),
            *self.observers,
        ]
        # The /metrics listener; `serve` starts it (tests may too).
        self.metrics = MetricsServer(self.db)
        # Every flag and config in memory, fed by the tail: Evaluate*/Resolve* never query.
        self.read_model = ReadModel(
            self.db, self.changes, answer_cache_bytes=self.settings.answer_cache_mib * 1024 * 1024
        )
        # flagd evaluation / sync protocols over the same read model (server/openfeature/).
        self.openfeature = OpenFeature(self.read_model, self.changes)
        self.health = health.aio.HealthServicer()
        # One pipeline and one instance of each servicer, shared by the gRPC port and the
        # HTTP listener's JSON API, so both answer (and refuse) alike.
        self.pipeline = Pipeline(self.authorizer, self.settings.default_deadline_s, self.observers)
        # Health probes and result retention (server/ops/prober.py); timings come from settings
        # so tests can run them fast.
        self.prober = Prober(self.db, ProberConfig.from_settings(self.settings))
        self.config_servicer = ConfigServicer(self.db, watch=self.watch, read_model=self.read_model)
        self.flag_servicer = FlagServicer(self.db, watch=self.watch, read_model=self.read_model)
        self.health_servicer = HealthServicer(
            self.db, self.prober.config.allow_list, self.settings.record_result_min_interval_s
        )
        # By full service name, for the HTTP listener's JSON API (server/http/api.py).
        self.servicers: dict[str, object] = dict(
            zip(
                PLATFORM_SERVICE_NAMES,
                (self.config_servicer, self.flag_servicer, self.health_servicer),
                strict=True,
            )
        )
        # The HTTP listener (settings.http_listen; server/http/). Each function here adds its
        # routes before the port opens: append to this list to serve something new over HTTP.
        self.http = HttpListener()
        self.http_routes: list[RouteRegistrar] = [api.register, console.register, ofrep.register]
        self.http_port = 0
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Hooks for background jobs: each is started after the server and cancelled on stop.
        self.background: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._watch_database,
            self.tail.run,
            self.sequencer.run,
            self.read_model.run,
        ]
        if self.settings.probe_enabled:
            self.background.append(self.prober.run)
        self.background.append(lambda: prune_loop(self.db, self.settings.health_prune_interval_s))
        # The bus relay and inbox (server/bus/), woken by the change engine.
        self.bus: Bus | None = None
        if self.settings.bus_enabled:
            if self.settings.nats_mode != "external":
                raise SettingsError(
                    "the embedded nats-server is started by `platform-admin serve`; give the"
                    " App a nats:// URL or PLATFORM_ADMIN_NATS_URL=off"
                )
            self.bus = Bus(
                self.settings,
                self.db,
                self.settings.pool_settings(self.conninfo),
                ChangeSignal(self.changes),
                self._set_relay_health,
            )
            self.metrics.collector.relay_enabled = True
            self.background.append(self.bus.run)
        self._serving: bool | None = None
        self._fresh: bool | None = None

    async def start(self) -> int:
        await self.db.open(wait=False)
        server = self.pipeline.guard(grpc.aio.server(options=server_options(self.reuse_port)))
        config_pb2_grpc.add_ConfigServiceServicer_to_server(self.config_servicer, server)
        flag_pb2_grpc.add_FlagServiceServicer_to_server(self.flag_servicer, server)
        health_api_pb2_grpc.add_HealthServiceServicer_to_server(self.health_servicer, server)
        self.openfeature.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable(
            server,
            [
                config_pb2.DESCRIPTOR,
                flag_pb2.DESCRIPTOR,
                health_api_pb2.DESCRIPTOR,
                health_pb2.DESCRIPTOR,
                *OPENFEATURE_FILES,
            ],
        )
        if self.credentials is None:
            self.port = server.add_insecure_port(self.settings.listen)
        else:
            self.port = server.add_secure_port(self.settings.listen, self.credentials)
        await self._set_serving(await self.db.ping())
        # Loaded before the port answers, so the first call sees every flag and config; if the
        # database is down now, the read model's background job keeps trying.
        await self.read_model.try_load(timeout=max(5.0, self.settings.statement_timeout_ms / 1000))
        await self._set_fresh()
        if self.settings.http_listen is not None:
            # Before the gRPC port answers: a taken HTTP port stops the start (OSError).
            self.http_port = await self.http.start(
                self.settings.http_listen,
                build_application(self.authorizer, self, self.http_routes),
                ssl_context=self.http_ssl,
                reuse_port=self.reuse_port,
            )
        await server.start()
        self.server = server
        for job in self.background:
            self._tasks.append(asyncio.create_task(job()))
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        if serving:
            log.info("database reachable: SERVING")
        else:
            log.warning("database unreachable: NOT_SERVING")

    async def _set_relay_health(self, connected: bool) -> None:
        await self.health.set(
            RELAY_HEALTH,
            health_pb2.HealthCheckResponse.SERVING
            if connected
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    async def _set_fresh(self) -> None:
        """READ_MODEL_HEALTH is SERVING while the in-memory answers are known to be current.

        While the database is unreachable, Evaluate*/Resolve* keep answering from the last
        state; this status (and platform_admin_read_model_age_seconds) says it may be stale.
        """
        at = self.read_model.current_at
        if at is not None:
            metrics.read_model_current(at)
        fresh = not self.read_model.stale
        if fresh == self._fresh:
            return
        self._fresh = fresh
        await self.health.set(
            READ_MODEL_HEALTH,
            health_pb2.HealthCheckResponse.SERVING
            if fresh
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        if not fresh and self.read_model.loaded.is_set():
            log.warning(
                "read model may be stale: answering from the state of %.0fs ago",
                self.read_model.age() or 0.0,
            )

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it does not answer."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self._set_serving(await self.db.ping(timeout=self.health_interval_s * 2))
            await self._set_fresh()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        # New calls are refused from now on; calls in flight get the grace period, while
        # open watch streams end with UNAVAILABLE so clients resume elsewhere by cursor.
        stopping = (
            asyncio.ensure_future(self.server.stop(grace)) if self.server is not None else None
        )
        await self.watch.close(timeout=max(grace, 0.5))
        await self.openfeature.close(timeout=max(grace, 0.5))
        await self.http.stop()
        if stopping is not None:
            await stopping
        await cancel_all(self._tasks)
        self._tasks.clear()
        self.read_model.stop()
        await self.db.close()


async def cancel_all(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancels background tasks and waits for them, re-cancelling until they end.

    A single cancel can be lost (a task catching it, or asyncio races of Python 3.11 where
    an inner await completes in the same step), which would make shutdown wait forever;
    repeating the cancel until the task is done keeps stop bounded.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending and asyncio.get_running_loop().time() > deadline:
            names = ", ".join(t.get_name() for t in pending)
            log.error("background tasks did not stop within %.1fs: %s", timeout, names)
            break
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("background task %s ended with %r", task.get_name(), task.exception())
