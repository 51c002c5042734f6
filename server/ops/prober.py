"""The health prober and the result-retention loop: background jobs of every replica.

Every ``poll_interval_s`` the prober claims the sources that are due (storage/health.py:
``FOR UPDATE SKIP LOCKED`` on ``next_check_at``, which moves one interval ahead in the
same statement), so with N replicas each source is checked once per interval, not N
times. Each claimed source is checked concurrently (at most ``concurrency`` at a time)
and its raw result recorded with flap damping in one transaction.

What a check may do is bounded, because the URL came from a caller:
* every address contacted must be allowed by the probe allow-list
  (PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS), checked on the addresses actually resolved;
* http(s): one GET with a timeout (default 5 s), redirects followed only to the same
  host and port (at most 5), at most 64 KiB of body read, no proxy from the environment;
* grpc://host:port[/service]: grpc.health.v1.Health/Check on the resolved address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from grpc_health.v1 import health_pb2, health_pb2_grpc
from yarl import URL

from domain import health as rules
from domain.errors import DomainError, InvalidArgument, NotFound
from domain.health import AllowList, ProbeTarget, Status
from server.ops import metrics
from server.settings import Settings
from storage import health
from storage.db import Database

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class ProberConfig:
    allow_list: AllowList
    timeout_s: float = rules.PROBE_TIMEOUT_S
    poll_interval_s: float = rules.PROBE_POLL_S
    concurrency: int = rules.PROBE_CONCURRENCY
    max_body_bytes: int = MAX_BODY_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ProberConfig:
        return cls(
            allow_list=AllowList.parse(settings.probe_allowed_hosts),
            timeout_s=settings.probe_timeout_s,
            poll_interval_s=settings.probe_poll_s,
            concurrency=settings.probe_concurrency,
        )


class NotAllowed(OSError):
    """A probe would contact an address outside the allow-list."""


def _not_allowed(host: str, address: str | None = None) -> NotAllowed:
    where = f"{host} ({address})" if address and address != host else host
    literal = rules.ip_literal(address or host)
    if literal is not None and rules.always_denied(literal):
        return NotAllowed(f"{where} is never probed (metadata, link-local or special address)")
    return NotAllowed(f"{where} is not allowed for probing (PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS)")


class AllowListResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses addresses outside the list.

    Checking the addresses aiohttp will actually connect to (not a separate lookup)
    leaves no window for a DNS answer to change between the check and the connection.
    """

    def __init__(self, allow_list: AllowList) -> None:
        self.allow_list = allow_list
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            if not self.allow_list.allows_resolved(host, answer["host"]):
                raise _not_allowed(host, answer["host"])
        return answers

    async def close(self) -> None:
        await self._inner.close()


def _check_literal(allow_list: AllowList, host: str) -> None:
    """aiohttp connects to IP literals without asking the resolver: check them here."""
    literal = rules.ip_literal(host)
    if literal is not None and not allow_list.allows_address(literal):
        raise _not_allowed(host)


class HttpProbe:
    """One aiohttp session shared by all http(s) checks of a prober."""

    def __init__(self, config: ProberConfig) -> None:
        self.config = config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=AllowListResolver(config.allow_list),
                use_dns_cache=False,
                limit=max(config.concurrency, 1),
            ),
            trust_env=False,  # an environment proxy would bypass the allow-list
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        await self.session.close()

    async def check(self, target: ProbeTarget) -> tuple[Status, dict[str, Any]]:
        url = URL(target.url)
        origin = (url.host, url.port)
        for _ in range(MAX_REDIRECTS + 1):
            _check_literal(self.config.allow_list, url.host or "")
            async with self.session.get(
                url, allow_redirects=False, headers={"Accept": "application/json, */*"}
            ) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    location = url.join(URL(response.headers["Location"]))
                    if (location.host, location.port) != origin or location.scheme not in (
                        "http",
                        "https",
                    ):
                        return Status.UNHEALTHY, {
                            "http_status": response.status,
                            "error": f"redirect to another host refused: {location.host}",
                        }
                    url = location
                    continue
                body = await self._read_body(response)
            truncated = len(body) > self.config.max_body_bytes
            return rules.http_status_of(
                response.status, bytes(body[: self.config.max_body_bytes]), truncated
            )
        return Status.UNHEALTHY, {"error": f"more than {MAX_REDIRECTS} redirects"}

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytearray:
        """Reads at most max_body_bytes + 1 (to know it was longer), then drops the rest."""
        limit = self.config.max_body_bytes
        body = bytearray()
        while len(body) <= limit:
            chunk = await response.content.read(limit + 1 - len(body))
            if not chunk:
                return body
            body += chunk
        response.close()  # the rest is never read: the connection is closed, not drained
        return body


async def _grpc_address(allow_list: AllowList, target: ProbeTarget) -> str:
    """The checked address to dial, as a gRPC target string."""
    literal = rules.ip_literal(target.host)
    if literal is not None:
        if not allow_list.allows_address(literal):
            raise _not_allowed(target.host)
        address: str = str(literal)
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
        if not infos:
            raise OSError(f"{target.host} does not resolve")
        addresses = [str(info[4][0]) for info in infos]
        for candidate in addresses:
            if not allow_list.allows_resolved(target.host, candidate):
                raise _not_allowed(target.host, candidate)
        address = addresses[0]
    if ipaddress.ip_address(address).version == 6:
        return f"ipv6:[{address}]:{target.port}"
    return f"ipv4:{address}:{target.port}"


async def grpc_check(
    allow_list: AllowList, target: ProbeTarget, timeout_s: float
) -> tuple[Status, dict[str, Any]]:
    dial = await _grpc_address(allow_list, target)
    options = [("grpc.default_authority", target.host_port), ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(dial, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(
                health_pb2.HealthCheckRequest(service=target.grpc_service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details: dict[str, Any] = {"grpc_status": code.name, "error": exc.details() or ""}
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                details["error"] = f"timed out after {timeout_s:g} s"
            # NOT_FOUND is grpc.health's answer for a service it does not know.
            if code is grpc.StatusCode.NOT_FOUND:
                details["grpc_status"] = "SERVICE_UNKNOWN"
                return Status.DEGRADED, details
            return Status.UNHEALTHY, details
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return rules.grpc_status_of(name), {"grpc_status": name}


async def probe(http: HttpProbe, config: ProberConfig, url: str) -> tuple[Status, dict[str, Any]]:
    """Checks one URL; never raises: every failure is an unhealthy result with its reason."""
    started = time.perf_counter()
    details: dict[str, Any]
    try:
        target = rules.parse_health_url("health_url", url)
    except InvalidArgument as exc:
        metrics.probe_result(Status.UNHEALTHY.value)
        return Status.UNHEALTHY, {"error": exc.message}
    kind = "grpc" if target.is_grpc else "http"
    try:
        async with asyncio.timeout(config.timeout_s):
            if target.is_grpc:
                status, details = await grpc_check(config.allow_list, target, config.timeout_s)
            else:
                status, details = await http.check(target)
    except TimeoutError:
        status, details = Status.UNHEALTHY, {"error": f"timed out after {config.timeout_s:g} s"}
    except NotAllowed as exc:
        status, details = Status.UNHEALTHY, {"error": str(exc)}
    except aiohttp.ClientConnectorError as exc:
        status, details = Status.UNHEALTHY, {"error": f"cannot connect: {exc.os_error}"}
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # ValueError: e.g. a Location header that is not a URL.
        status, details = Status.UNHEALTHY, {"error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # a check must end in a result, whatever the peer sent
        log.warning("probe of %s failed unexpectedly", url, exc_info=exc)
        status, details = Status.UNHEALTHY, {"error": f"{type(exc).__name__}"}
    details = {"probe": kind, **details}
    elapsed = time.perf_counter() - started
    details["latency_ms"] = round(elapsed * 1000, 1)
    metrics.probe_result(status.value, elapsed)
    return status, details


class Prober:
    """Claims due sources and checks them, until cancelled."""

    def __init__(self, db: Database, config: ProberConfig) -> None:
        self.db = db
        self.config = config
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        http = HttpProbe(self.config)
        try:
            while True:
                try:
                    await self.poll(http)
                except DomainError as exc:  # database down: try again next poll
                    log.warning("prober: cannot claim sources: %s", exc.message)
                await asyncio.sleep(self.config.poll_interval_s)
        finally:
            for task in self._inflight:
                task.cancel()
            for task in list(self._inflight):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await http.close()

    async def poll(self, http: HttpProbe) -> int:
        """Claims what this replica has room for and starts checking it; returns the count."""
        room = self.config.concurrency - len(self._inflight)
        if room <= 0:
            return 0
        claimed = await health.claim_due(self.db, room)
        for source in claimed:
            task = asyncio.create_task(self._check(http, source))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _check(self, http: HttpProbe, source: health.Claimed) -> None:
        status, details = await probe(http, self.config, source.health_url)
        try:
            await health.record_result(self.db, source.id, status, details)
        except NotFound:
            pass  # deleted while being checked
        except DomainError as exc:
            log.warning("prober: cannot record %s: %s", source.service_id, exc.message)


async def prune_loop(db: Database, interval_s: float) -> None:
    """Applies health-result retention every ``interval_s`` (every replica; one prunes)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await health.prune_results(db)
            if removed:
                log.info("pruned %d health check results older than 30 days", removed)
        except DomainError as exc:
            log.warning("health retention: %s", exc.message)
