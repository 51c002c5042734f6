"""A real server with authentication on, seeded flags and configs, and real OpenFeature
providers pointed at it: what the OpenFeature tests share.

The expected answers always come from platform_admin.v1 (EvaluateFlag / ResolveConfig)
over gRPC, never from the code under test.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.evaluation_context import EvaluationContext
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb

from tests.auth_helpers import ADMIN, SECRET, Caller, sign
from tests.grpcurl_server import RunningServer, start_server, stop_server

AUTH_ENV = {
    "PLATFORM_ADMIN_JWT_SECRET": SECRET,
    "PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE": "",
    "PLATFORM_ADMIN_JWT_ISSUER": "",
    "PLATFORM_ADMIN_AUTH": "",
    "PLATFORM_ADMIN_PROBE_ENABLED": "false",
}
TENANTS = [f"01JT{i:022d}" for i in range(12)]
NODE = "node-1"

# key -> (default_enabled, enabled tenants, disabled tenants, archived)
FLAGS: dict[str, tuple[bool, list[str], list[str], bool]] = {
    "of.default-on": (True, [], TENANTS[0:2], False),
    "of.default-off": (False, TENANTS[2:4], [TENANTS[4]], False),
    "of.mixed": (False, TENANTS[5:8], TENANTS[8:9], False),
    "of.archived": (True, [TENANTS[0]], [], True),
}
# (key, scope, tenant, node, value)
CONFIG_ROWS: list[tuple[str, int, str, str, Any]] = [
    ("global.password_min_length", cpb.CONFIG_SCOPE_PLATFORM, "", "", 14),
    ("global.password_min_length", cpb.CONFIG_SCOPE_TENANT, TENANTS[0], "", 16),
    ("global.password_min_length", cpb.CONFIG_SCOPE_TENANT, TENANTS[1], "", 20),
    ("global.mfa_required_default", cpb.CONFIG_SCOPE_TENANT, TENANTS[2], "", True),
    ("email.smtp_host", cpb.CONFIG_SCOPE_PLATFORM, "", "", "mail.example.com"),
    ("email.smtp_host", cpb.CONFIG_SCOPE_NODE, "", NODE, "relay.local"),
    ("email.smtp_port", cpb.CONFIG_SCOPE_NODE, "", NODE, 2525),
    ("global.session_idle_minutes", cpb.CONFIG_SCOPE_TENANT, TENANTS[3], "", 45),
]
CONFIG_TYPES = {
    "global.password_min_length": int,
    "global.mfa_required_default": bool,
    "email.smtp_host": str,
    "email.smtp_port": int,
    "global.session_idle_minutes": int,
}


def token(caller: Caller) -> str:
    return sign(caller.claims(ttl_s=3600))


def metadata(caller: Caller) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token(caller)}"),)


def call_credentials(caller: Caller) -> grpc.ChannelCredentials:
    """What a provider is given to authenticate: the token on every call of the channel.

    ``local_channel_credentials`` is plaintext on loopback (tests); in production use
    ``grpc.ssl_channel_credentials()`` instead.
    """
    return grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
        grpc.access_token_call_credentials(token(caller)),
    )


def value_of(message: cpb.ConfigValue) -> Any:
    kind = message.WhichOneof("kind")
    return getattr(message, kind) if kind else None


def config_value(value: Any) -> cpb.ConfigValue:
    if isinstance(value, bool):
        return cpb.ConfigValue(bool_value=value)
    if isinstance(value, int):
        return cpb.ConfigValue(int_value=value)
    return cpb.ConfigValue(string_value=value)


def seed(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        md = metadata(ADMIN)
        for key, (default, enabled, disabled, archived) in FLAGS.items():
            flags.CreateFlag(fpb.CreateFlagRequest(key=key, default_enabled=default), metadata=md)
            for tenant, override in [
                *((t, fpb.TENANT_OVERRIDE_ENABLED) for t in enabled),
                *((t, fpb.TENANT_OVERRIDE_DISABLED) for t in disabled),
            ]:
                flags.SetTenantOverride(
                    fpb.SetTenantOverrideRequest(key=key, tenant_id=tenant, override=override),
                    metadata=md,
                )
            if archived:
                flags.ArchiveFlag(fpb.ArchiveFlagRequest(key=key), metadata=md)
        for key, scope, tenant, node, value in CONFIG_ROWS:
            configs.SetConfig(
                cpb.SetConfigRequest(
                    key=key, scope=scope, tenant_id=tenant, node_id=node, value=config_value(value)
                ),
                metadata=md,
            )


@dataclass(frozen=True)
class Expected:
    value: Any  # None: the caller's default (archived flag)
    reason: str
    variant: str | None


class Truth:
    """The answers platform_admin.v1 gives, to compare every provider with."""

    def __init__(self, server: RunningServer) -> None:
        self.channel = grpc.insecure_channel(server.address)
        self.flags = flag_pb2_grpc.FlagServiceStub(self.channel)
        self.configs = config_pb2_grpc.ConfigServiceStub(self.channel)
        self.md = metadata(ADMIN)

    def close(self) -> None:
        self.channel.close()

    def flag(self, key: str, tenant: str) -> Expected:
        answer = self.flags.EvaluateFlag(
            fpb.EvaluateFlagRequest(key=key, tenant_id=tenant), metadata=self.md
        )
        if answer.reason == fpb.EVALUATION_REASON_ARCHIVED:
            return Expected(None, "DISABLED", None)
        decided = answer.reason in (
            fpb.EVALUATION_REASON_TENANT_ENABLED,
            fpb.EVALUATION_REASON_TENANT_DISABLED,
        )
        return Expected(
            answer.enabled,
            "TARGETING_MATCH" if decided else "DEFAULT",
            "on" if answer.enabled else "off",
        )

    def config(self, key: str, tenant: str, node: str | None) -> Expected:
        answer = self.configs.ResolveConfig(
            cpb.ResolveConfigRequest(key=key, tenant_id=tenant, node_id=node or ""),
            metadata=self.md,
        )
        value = value_of(answer.value)
        decided = answer.source_scope in (cpb.CONFIG_SCOPE_TENANT, cpb.CONFIG_SCOPE_NODE)
        variant = str(value).lower() if isinstance(value, bool) else str(value)
        return Expected(value, "TARGETING_MATCH" if decided else "DEFAULT", variant)


def contexts() -> Iterator[tuple[str, str | None, EvaluationContext]]:
    """Every tenant with and without the node; half name the tenant by tenantId (with a
    user as targetingKey, which tenantId overrides), half by targetingKey."""
    for i, tenant in enumerate(TENANTS):
        for node in (None, NODE):
            attributes: dict[str, Any] = {"nodeId": node} if node else {}
            if i % 2:
                context = EvaluationContext("user-42", {**attributes, "tenantId": tenant})
            else:
                context = EvaluationContext(tenant, attributes)
            yield tenant, node, context


@contextlib.contextmanager
def client_for(provider: Any) -> Iterator[OpenFeatureClient]:
    """The SDK client of ``provider`` (registered and initialized); shut down afterwards."""
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(provider, domain)
    try:
        yield api.get_client(domain)
    finally:
        provider.shutdown()


def flagd_provider(
    server: RunningServer, mode: ResolverType, caller: Caller | None, **options: Any
) -> FlagdProvider:
    host, port = server.address.rsplit(":", 1)
    return FlagdProvider(
        resolver_type=mode,
        host=host,
        port=int(port),
        channel_credentials=call_credentials(caller) if caller else None,
        deadline_ms=5000,
        retry_backoff_ms=200,
        retry_backoff_max_ms=1000,
        cache=CacheType.LRU,  # the default: our answers must never be cached as STATIC
        **options,
    )


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def openfeature_server(
    databases: Any, tmp_path_factory: Any
) -> Iterator[tuple[RunningServer, Truth]]:
    """One seeded ``platform-admin serve`` (auth on, HTTP listener on) per test module."""
    db_url = databases.create()
    server = start_server(db_url, tmp_path_factory.mktemp("openfeature"), env=AUTH_ENV)
    truth: Truth | None = None
    try:
        seed(server)
        truth = Truth(server)
        yield server, truth
    finally:
        if truth is not None:
            truth.close()
        stop_server(server)
        databases.drop(db_url)
