"""Channels to the replicas: service config, keepalive, credentials, the token per call.

A target is anything gRPC resolves (``host:port``, ``dns:///name:port`` for every address
of a name); a list of targets gets one channel each and the watch streams move to the
next one when a stream fails, so a killed replica is left at the first reconnect. Unary
calls are retried by gRPC itself on UNAVAILABLE (the service config below); the watch
loop handles stream failures, since a stream that has delivered messages cannot be
retried transparently.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence

import grpc

Token = str | Callable[[], str] | Callable[[], Awaitable[str]]

_SERVICES = (
    "platform_admin.v1.FlagService",
    "platform_admin.v1.ConfigService",
    "platform_admin.v1.HealthService",
)

SERVICE_CONFIG = json.dumps(
    {
        # Spread streams over every address a name resolves to; a dead one is skipped.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": s} for s in _SERVICES],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    # The server pings every 30 s and sends heartbeats on idle streams; a client ping once
    # a minute finds a dead peer behind a silent network without tripping ping limits.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # One connection per client: its two streams never queue behind other channels' streams
    # under the server's per-connection stream limit (gRPC shares connections otherwise).
    ("grpc.use_local_subchannel_pool", 1),
    # Reconnect promptly after a replica restarts (gRPC's default backs off to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


class Connection:
    """One channel per target, the one in use, and the metadata every call carries."""

    def __init__(
        self,
        targets: Sequence[str],
        token: Token | None,
        credentials: grpc.ChannelCredentials | None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is required")
        self.targets = list(targets)
        self._token = token
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0

    def channel(self, index: int | None = None) -> grpc.aio.Channel:
        """The channel of the target in use (created on first use, on the running loop)."""
        target = self.targets[self._current if index is None else index]
        channel = self._channels.get(target)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(target, self._credentials, CHANNEL_OPTIONS)
            self._channels[target] = channel
        return channel

    def rotate(self) -> None:
        """Moves to the next target after a failure (no-op with a single target)."""
        self._current = (self._current + 1) % len(self.targets)

    @property
    def target(self) -> str:
        return self.targets[self._current]

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token
        if token is None:
            return ()
        if callable(token):
            produced = token()
            token = await produced if inspect.isawaitable(produced) else produced
        return (("authorization", f"Bearer {token}"),)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()


def credentials_for(tls: bool | grpc.ChannelCredentials) -> grpc.ChannelCredentials | None:
    """``True``: TLS with the system roots; a ChannelCredentials: as given; else plaintext."""
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    return grpc.ssl_channel_credentials() if tls else None
