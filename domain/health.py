"""Health rules: registration validation, probe result mapping, flap damping, aggregation.

Pure functions only (no I/O): the servicer validates requests with them, the prober maps
what it saw on the wire to a raw status with them, and storage applies the damping state
machine to each recorded result inside its transaction.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from domain.errors import Collector, InvalidArgument
from domain.text import has_control


class Status(StrEnum):
    """Raw and damped statuses as stored (lower case, as in the seed's CHECK)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


# Worse statuses rank higher; the platform status is the highest rank present.
_RANK = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}

SERVICE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,99}$")
SCHEMES = ("http", "https", "grpc")
MAX_URL_LENGTH = 2048
MAX_DETAILS_BYTES = 16 * 1024


@dataclass(frozen=True)
class Bounds:
    default: int
    lo: int
    hi: int


STALENESS_THRESHOLD_S = Bounds(60, 5, 86_400)
CHECK_INTERVAL_S = Bounds(30, 1, 3_600)
FAILURE_THRESHOLD = Bounds(2, 1, 100)
SUCCESS_THRESHOLD = Bounds(1, 1, 100)
RETENTION = timedelta(days=30)

# update_mask paths of UpdateHealthSource; service_id is the identity heartbeats use.
MUTABLE_FIELDS = (
    "health_url",
    "staleness_threshold_s",
    "check_interval_s",
    "failure_threshold",
    "success_threshold",
)
IMMUTABLE_FIELDS = ("id", "service_id")


# --- registration -------------------------------------------------------------------------


def check_service_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument.field(field, "is required")
    if not SERVICE_ID_RE.fullmatch(value):
        raise InvalidArgument.field(
            field, "must match ^[a-z][a-z0-9-]{0,99}$ (lower-case letter, then a-z, 0-9, '-')"
        )
    return value


@dataclass(frozen=True)
class ProbeTarget:
    """A parsed health URL."""

    scheme: str  # http, https or grpc
    host: str  # lower case, without IPv6 brackets
    port: int
    url: str  # the URL as registered
    grpc_service: str = ""  # grpc://host:port/<service>, "" for the server as a whole

    @property
    def is_grpc(self) -> bool:
        return self.scheme == "grpc"

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_health_url(field: str, url: str) -> ProbeTarget:
    """Checks the shape of a health URL; the reason names what is wrong."""
    if not url:
        raise InvalidArgument.field(field, "is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument.field(field, f"must be at most {MAX_URL_LENGTH} characters")
    if not url.isascii() or has_control(url) or " " in url:
        raise InvalidArgument.field(field, "must be an ASCII URL without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidArgument.field(field, f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if not parts.scheme or "://" not in url:
        raise InvalidArgument.field(field, "is not a URL (expected http://, https:// or grpc://)")
    if scheme not in SCHEMES:
        raise InvalidArgument.field(
            field, f"scheme {scheme!r} is not allowed (use http://, https:// or grpc://)"
        )
    if not host:
        raise InvalidArgument.field(field, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument.field(field, "must not contain user info (credentials)")
    if port == 0:
        raise InvalidArgument.field(field, "port must be 1-65535")
    if scheme == "grpc":
        if port is None:
            raise InvalidArgument.field(field, "grpc:// URLs need a port (grpc://host:port)")
        if parts.query or parts.fragment:
            raise InvalidArgument.field(field, "grpc:// URLs take no query or fragment")
        service = parts.path.lstrip("/")
        if "/" in service:
            raise InvalidArgument.field(field, "grpc:// path is one service name at most")
        return ProbeTarget(scheme, host.lower(), port, url, service)
    default_port = 443 if scheme == "https" else 80
    return ProbeTarget(scheme, host.lower(), port or default_port, url)


def check_bounded(collector: Collector, field: str, value: int, bounds: Bounds) -> int:
    """0 means the default; anything else must lie within the bounds."""
    if value == 0:
        return bounds.default
    if not bounds.lo <= value <= bounds.hi:
        collector.add(
            field, f"must be {bounds.lo}-{bounds.hi:,} (0 for the default {bounds.default})"
        )
    return value


def check_update_mask(field: str, paths: Iterable[str]) -> tuple[str, ...]:
    """The mutable fields to change; an empty mask means all of them."""
    chosen = list(dict.fromkeys(paths))
    if not chosen:
        return MUTABLE_FIELDS
    for path in chosen:
        if path in IMMUTABLE_FIELDS:
            raise InvalidArgument.field(field, f"{path!r} cannot be changed")
        if path not in MUTABLE_FIELDS:
            raise InvalidArgument.field(
                field, f"unknown field {path!r} (allowed: {', '.join(MUTABLE_FIELDS)})"
            )
    return tuple(chosen)


# Active probes: each waits at most PROBE_TIMEOUT_S; due sources are looked for every
# PROBE_POLL_S; at most PROBE_CONCURRENCY run at once (PLATFORM_ADMIN_PROBE_* change them).
PROBE_TIMEOUT_S = 5.0
PROBE_POLL_S = 1.0
PROBE_CONCURRENCY = 32


# --- probe allow-list (SSRF guard) ---------------------------------------------------------

# Loopback and private networks: internal services, never link-local (cloud metadata at
# 169.254.169.254) nor the public internet unless an operator lists them.
DEFAULT_ALLOWED_HOSTS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
_HOST_PATTERN_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never probed, whatever PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS says (even "*"): cloud instance
# metadata services hand out credentials to whoever asks from the instance, and link-local,
# unspecified, multicast and broadcast addresses are no service's health endpoint. An
# operator who lists 169.254.0.0/16 or fc00::/7 still cannot reach these.
ALWAYS_DENIED: tuple[IpNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OCI metadata at 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/32",  # AWS IPv6 instance metadata (fd00:ec2::254) and DNS
        "fd20:ce::254/128",  # GCP IPv6 metadata server
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure host (WireServer)
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host on Linux
        "::/128",  # unspecified
        "224.0.0.0/4",  # IPv4 multicast
        "ff00::/8",  # IPv6 multicast
        "255.255.255.255/32",  # broadcast
    )
)
# IPv6 forms that carry an IPv4 address a packet may end up at.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254
    if ip.sixtofour is not None:
        return ip.sixtofour  # 2002:a9fe:a9fe::
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # 64:ff9b::a9fe:a9fe
    return None


def always_denied(address: str | IpAddress) -> bool:
    """True for an address in ALWAYS_DENIED (or an IPv6 form of one); unparsable: True."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return True
    candidates: list[IpAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            candidates.append(embedded)
    return any(c in net for c in candidates for net in ALWAYS_DENIED if net.version == c.version)


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks the prober may contact.

    An entry is an IP network or address ("10.0.0.0/8", "::1"), an exact host name
    ("billing.internal"), a suffix pattern ("*.svc.cluster.local"), or "*" (anything).
    A host name is allowed when it matches a name entry; otherwise every address it
    resolves to must lie in a listed network.
    """

    networks: tuple[IpNetwork, ...]
    names: tuple[str, ...] = ()
    any_host: bool = False

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> AllowList:
        """Raises ValueError naming the first bad entry."""
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        networks: list[IpNetwork] = []
        names: list[str] = []
        any_host = False
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                any_host = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_PATTERN_RE.fullmatch(entry):
                raise ValueError(f"{raw.strip()!r} is neither an IP network nor a host name")
            names.append(entry)
        return cls(tuple(networks), tuple(names), any_host)

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.any_host:
            return True
        for name in self.names:
            if name.startswith("*."):
                if host.endswith(name[1:]):
                    return True
            elif host == name:
                return True
        return False

    def allows_address(self, address: str | IpAddress) -> bool:
        """Whether the prober may connect to this address (ALWAYS_DENIED first)."""
        if always_denied(address):
            return False
        if self.any_host:
            return True
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        return any(ip in net for net in self.networks if net.version == ip.version)

    def allows_resolved(self, host: str, address: str | IpAddress) -> bool:
        """Whether a host name, resolved to ``address``, may be contacted there.

        A listed name skips the network check but never the always-denied ranges: a name
        entry (or "*") must not become a way to reach a metadata service through DNS.
        """
        if always_denied(address):
            return False
        return self.allows_name(host) or self.allows_address(address)


def ip_literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_target_allowed(field: str, target: ProbeTarget, allow: AllowList) -> None:
    """Refuses, at registration, an IP-literal host outside the allow-list.

    Host names are checked by the prober each time they are resolved (an answer can
    change; checking once here would invite DNS rebinding).
    """
    ip = ip_literal(target.host)
    if ip is not None and always_denied(ip):
        raise InvalidArgument.field(
            field,
            f"host {target.host} is never probed: cloud metadata, link-local and special"
            " addresses are refused whatever PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS says",
        )
    if ip is not None and not allow.allows_address(ip):
        raise InvalidArgument.field(
            field,
            f"host {target.host} is not allowed for probing"
            " (see PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS)",
        )
    if (
        ip is None
        and target.host == "localhost"
        and not allow.allows_name("localhost")
        and not allow.allows_address("127.0.0.1")
    ):
        raise InvalidArgument.field(
            field,
            "host localhost is not allowed for probing (see PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS)",
        )


# --- details -------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def check_details(field: str, details: Any) -> dict[str, Any]:
    """A JSON object of at most 16 KiB (compact UTF-8 JSON), finite numbers only."""
    if not isinstance(details, Mapping):
        raise InvalidArgument.field(field, "must be a JSON object")
    if not _finite(details):
        raise InvalidArgument.field(field, "must be JSON: NaN and Infinity are not numbers")
    size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_DETAILS_BYTES:
        raise InvalidArgument.field(
            field, f"is {size:,} bytes as JSON; at most {MAX_DETAILS_BYTES:,} (16 KiB)"
        )
    return dict(details)


# --- mapping what a probe saw to a raw status ----------------------------------------------

# Echo a degraded body's JSON object in the details only when it is this small.
MAX_ECHOED_BODY_BYTES = 4 * 1024


def http_status_of(code: int, body: bytes, truncated: bool) -> tuple[Status, dict[str, Any]]:
    """2xx → healthy, unless the JSON body says "status": "degraded"; anything else unhealthy."""
    details: dict[str, Any] = {"http_status": code}
    if truncated:
        details["body_truncated"] = True
    if not 200 <= code <= 299:
        details["error"] = f"HTTP status {code}"
        return Status.UNHEALTHY, details
    parsed: Any = None
    if body and not truncated:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
    if isinstance(parsed, dict):
        said = parsed.get("status")
        if isinstance(said, str) and said.strip().lower() == "degraded":
            if len(body) <= MAX_ECHOED_BODY_BYTES and _finite(parsed):
                details["body"] = parsed
            return Status.DEGRADED, details
    return Status.HEALTHY, details


# grpc.health.v1 HealthCheckResponse.ServingStatus names.
def grpc_status_of(serving_status: str) -> Status:
    """SERVING → healthy, NOT_SERVING → unhealthy, anything else (UNKNOWN, …) → degraded."""
    if serving_status == "SERVING":
        return Status.HEALTHY
    if serving_status == "NOT_SERVING":
        return Status.UNHEALTHY
    return Status.DEGRADED


# --- flap damping --------------------------------------------------------------------------


@dataclass(frozen=True)
class Damping:
    """The damped status of a source and the streaks that move it.

    ``status`` None means not decided yet (a new source). ``failures`` counts consecutive
    unhealthy results; ``successes`` consecutive non-failing (healthy or degraded) ones.
    """

    status: Status | None
    failures: int = 0
    successes: int = 0


def apply_result(
    state: Damping, result: Status, failure_threshold: int, success_threshold: int
) -> Damping:
    """The next state after one raw result.

    * unhealthy: the status becomes UNHEALTHY once ``failure_threshold`` unhealthy results
      came in a row;
    * healthy / degraded: a source that is unhealthy (or undecided) recovers to the latest
      result once ``success_threshold`` non-failing results came in a row; a source that is
      already up follows the service's own healthy/degraded answer at once (that is a
      report, not a flap of connectivity).
    """
    if result is Status.UNHEALTHY:
        failures = state.failures + 1
        status = state.status
        if status is not Status.UNHEALTHY and failures >= failure_threshold:
            status = Status.UNHEALTHY
        return Damping(status, failures, 0)
    successes = state.successes + 1
    status = state.status
    if status in (None, Status.UNHEALTHY):
        if successes >= success_threshold:
            status = result
    else:
        status = result
    return Damping(status, 0, successes)


# --- staleness and aggregation -------------------------------------------------------------


def is_stale(last_heartbeat: datetime, staleness_threshold_s: int, now: datetime) -> bool:
    return now - last_heartbeat > timedelta(seconds=staleness_threshold_s)


def effective_status(status: Status | None, stale: bool) -> Status | None:
    """What a source contributes to the platform status: stale counts as unhealthy."""
    return Status.UNHEALTHY if stale else status


def worst(statuses: Iterable[Status | None]) -> Status:
    """The platform status: the worst known status; healthy when nothing is known or failing."""
    known = [s for s in statuses if s is not None]
    if not known:
        return Status.HEALTHY
    return max(known, key=_RANK.__getitem__)
