"""Prometheus metrics: what the service does, exposed on PLATFORM_ADMIN_METRICS_LISTEN /metrics.

Three kinds of figures:

* call figures, recorded by :class:`RpcMetrics`, an observer of the call pipeline;
* event figures that other modules record with one-line calls::

      metrics.watch_subscribed("flags")     / metrics.watch_unsubscribed("flags")
      metrics.watch_sent("flags", n)        / metrics.watch_dropped("flags", n)
      metrics.probe_result("healthy", seconds)
      metrics.read_model_current()          # the in-memory model has applied the head

* database figures (pool, outbox backlog, sequencer lag), read when scraped: the pool's
  counters cost nothing, the outbox ones are one indexed query, refreshed at most once per
  ``DB_REFRESH_S`` and never on a call's path.

Metric objects live in prometheus-client's process-wide registry. Each serving process
(worker) has its own listener; with several workers, worker ``i`` listens on the configured
port + ``i`` (see :func:`worker_listen`), so every process is scraped as its own target and
no shared multiprocess directory is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.rpc.observers import FinishedCall
from storage.db import Database
from storage.ops import OutboxBacklog, outbox_backlog

log = logging.getLogger(__name__)
# The *_created series double the exposition for no operational use.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets from a cached read (~0.2 ms) to a slow write near the default deadline.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
DB_REFRESH_S = 1.0
DB_QUERY_TIMEOUT_S = 2.0

RPCS = Counter(
    "platform_admin_rpcs",
    "Finished RPCs by method and gRPC status code.",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "platform_admin_rpc_duration_seconds",
    "RPC duration from the handler's start to its status, by method and status code"
    " (for streams: the stream's lifetime).",
    ["method", "code"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "platform_admin_rpcs_in_flight",
    "RPCs being handled now, by method (streams count while open).",
    ["method"],
)
WATCH_SUBSCRIBERS = Gauge(
    "platform_admin_watch_subscribers",
    "Open watch streams, by stream (flags, configs).",
    ["stream"],
)
WATCH_SENT = Counter(
    "platform_admin_watch_events_sent",
    "Change events written to watch subscribers, by stream.",
    ["stream"],
)
WATCH_DROPPED = Counter(
    "platform_admin_watch_events_dropped",
    "Change events dropped from a slow subscriber's in-memory queue, by stream: the stream"
    " reads them again from the database (or, if it stopped reading, is ended and resumes"
    " by cursor); none is lost.",
    ["stream"],
)
WATCH_REFUSED = Counter(
    "platform_admin_watch_streams_refused",
    "Watch streams refused or ended by a limit, by stream and reason (TOO_MANY_STREAMS,"
    " TOO_MANY_STREAMS_FOR_PRINCIPAL, SNAPSHOT_TOO_SLOW).",
    ["stream", "reason"],
)
PROBE_RESULTS = Counter(
    "platform_admin_probe_results",
    "Health probe results, by status (healthy, degraded, unhealthy).",
    ["status"],
)
PROBE_SECONDS = Histogram(
    "platform_admin_probe_duration_seconds",
    "Duration of one health probe.",
    buckets=LATENCY_BUCKETS,
)

RELAY_PUBLISHED = Counter(
    "platform_admin_relay_published",
    "Outbox rows the bus relay published to JetStream (PubAck received, duplicates included).",
)
RELAY_FAILURES = Counter(
    "platform_admin_relay_failures",
    "Failed JetStream publishes of the bus relay (each is retried with back-off, in order).",
)
INBOX_MESSAGES = Counter(
    "platform_admin_inbox_messages",
    "Messages the inbox consumed, by subject (platform.heartbeat.* for every heartbeat) and"
    " outcome: applied, duplicate (recorded before: nothing changed), malformed (recorded with"
    " its error, never applied), failed (not acked: redelivered later).",
    ["subject", "outcome"],
)

_read_model_at: float | None = None


def _read_model_age() -> float:
    at = _read_model_at
    return math.nan if at is None else max(0.0, time.time() - at)


READ_MODEL_AGE = Gauge(
    "platform_admin_read_model_age_seconds",
    "Seconds since the in-memory read model last caught up with the change stream (NaN"
    " before it first loads); grows while the database is unreachable.",
)
READ_MODEL_AGE.set_function(_read_model_age)


# --- one-line API for other modules ------------------------------------------------------


def watch_subscribed(stream: str) -> None:
    WATCH_SUBSCRIBERS.labels(stream).inc()


def watch_unsubscribed(stream: str) -> None:
    WATCH_SUBSCRIBERS.labels(stream).dec()


def watch_sent(stream: str, n: int = 1) -> None:
    # Once per delivery on every stream: the labelled child is looked up once per stream kind.
    child = _WATCH_SENT_BY_STREAM.get(stream)
    if child is None:
        child = _WATCH_SENT_BY_STREAM[stream] = WATCH_SENT.labels(stream)
    child.inc(n)


_WATCH_SENT_BY_STREAM: dict[str, Any] = {}


def watch_dropped(stream: str, n: int = 1) -> None:
    WATCH_DROPPED.labels(stream).inc(n)


def watch_refused(stream: str, reason: str) -> None:
    WATCH_REFUSED.labels(stream, reason).inc()


def probe_result(status: str, seconds: float | None = None) -> None:
    PROBE_RESULTS.labels(status).inc()
    if seconds is not None:
        PROBE_SECONDS.observe(seconds)


def relay_published(n: int = 1) -> None:
    RELAY_PUBLISHED.inc(n)


def relay_failed() -> None:
    RELAY_FAILURES.inc()


def inbox_message(subject: str, outcome: str) -> None:
    INBOX_MESSAGES.labels(subject, outcome).inc()


def read_model_current(at: float | None = None) -> None:
    """The read model has applied every change up to the head (``at``: wall-clock time)."""
    global _read_model_at
    _read_model_at = time.time() if at is None else at


# Label values appear before the first event, so a scrape lists every family at once.
for _stream in ("flags", "configs"):
    WATCH_SUBSCRIBERS.labels(_stream)
    WATCH_SENT.labels(_stream)
    WATCH_DROPPED.labels(_stream)
for _status in ("healthy", "degraded", "unhealthy"):
    PROBE_RESULTS.labels(_status)


# --- calls ------------------------------------------------------------------------------


def code_name(code: Any) -> str:
    """grpc.StatusCode (or the integer the aio context sometimes gives) as 'OK', 'UNAVAILABLE'."""
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for member in grpc.StatusCode:
        if member.value[0] == code:
            return str(member.name)
    return "UNKNOWN"


class RpcMetrics:
    """Call pipeline observer: count, latency and in-flight gauge per method and code."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, Any], tuple[Any, Any]] = {}
        self._in_flight: dict[str, Any] = {}

    def _gauge(self, method: str) -> Any:
        child = self._in_flight.get(method)
        if child is None:
            child = self._in_flight[method] = IN_FLIGHT.labels(method.lstrip("/"))
        return child

    def on_call_start(self, method: str) -> None:
        self._gauge(method).inc()

    def on_call_done(self, call: FinishedCall) -> None:
        self._gauge(call.method).dec()
        children = self._children.get((call.method, call.code))
        if children is None:
            labels = (call.method.lstrip("/"), code_name(call.code))
            children = (RPCS.labels(*labels), RPC_SECONDS.labels(*labels))
            self._children[(call.method, call.code)] = children
        children[0].inc()
        children[1].observe(call.seconds)


# --- database figures --------------------------------------------------------------------


class DatabaseCollector(Collector):
    """Pool gauges (read live) and outbox figures (refreshed by :meth:`refresh`) of one App."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Set by the App when the bus relay runs: only then is relay lag meaningful.
        self.relay_enabled = False
        self.backlog: OutboxBacklog | None = None
        self._refreshed = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, max_age: float = DB_REFRESH_S) -> None:
        """Re-reads the outbox figures unless they are younger than ``max_age``.

        A failed read keeps the last figures; ``platform_admin_database_up`` says why.
        """
        async with self._lock:
            if time.monotonic() - self._refreshed < max_age:
                return
            try:
                async with asyncio.timeout(DB_QUERY_TIMEOUT_S):
                    self.backlog = await outbox_backlog(self.db)
            except Exception as exc:  # an outage must not break the scrape
                log.debug("outbox figures unavailable: %s", exc)
            self._refreshed = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.db.pool.get_stats()
        size = stats.get("pool_size", 0)
        yield GaugeMetricFamily(
            "platform_admin_db_pool_size", "Connections the pool holds (idle or lent).", size
        )
        yield GaugeMetricFamily(
            "platform_admin_db_pool_max_size",
            "Most connections the pool may open.",
            stats.get("pool_max", 0),
        )
        yield GaugeMetricFamily(
            "platform_admin_db_pool_in_use",
            "Connections lent to callers now.",
            max(0, size - stats.get("pool_available", 0)),
        )
        yield GaugeMetricFamily(
            "platform_admin_db_pool_waiting",
            "Callers queued for a connection now.",
            stats.get("requests_waiting", 0),
        )
        yield GaugeMetricFamily(
            "platform_admin_database_up",
            "1 while the database answers, 0 while it is unreachable (health NOT_SERVING).",
            1 if self.db.reachable else 0,
        )
        backlog = self.backlog
        nan = math.nan
        yield GaugeMetricFamily(
            "platform_admin_outbox_unsequenced_rows",
            "Committed outbox rows without a seq yet (not visible to watch streams).",
            backlog.unsequenced if backlog else nan,
        )
        yield GaugeMetricFamily(
            "platform_admin_outbox_unpublished_rows",
            "Outbox rows not yet marked published.",
            backlog.unpublished if backlog else nan,
        )
        yield GaugeMetricFamily(
            "platform_admin_sequencer_lag_seconds",
            "Age of the oldest committed outbox row still without a seq (0: caught up).",
            backlog.sequencer_lag_s if backlog else nan,
        )
        if self.relay_enabled:
            yield GaugeMetricFamily(
                "platform_admin_relay_lag_seconds",
                "Age of the oldest sequenced outbox row not yet published to JetStream"
                " (0: caught up).",
                backlog.relay_lag_s if backlog else nan,
            )


class _Joined(Collector):
    def __init__(self, *parts: Collector | CollectorRegistry) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.collect()


class MetricsServer:
    """The /metrics HTTP listener of one App, on the App's event loop."""

    def __init__(self, db: Database) -> None:
        self.collector = DatabaseCollector(db)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Joined(REGISTRY, self.collector))
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.collector.refresh()
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None


def worker_listen(listen: str, index: int) -> str:
    """Metrics address of worker ``index``: the configured port + index (0 stays 0)."""
    host, _, port = listen.rpartition(":")
    number = int(port)
    return f"{host}:{number + index if number else 0}"
